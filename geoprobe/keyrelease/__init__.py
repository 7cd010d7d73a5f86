"""Location-gated keys: a release server that hands a secret only to a client it times as near.

The server times a fresh challenge itself and releases only when the round trip is within the
client's bound, so added delay (a VM moved abroad, a relay on the path) can only lead to a
refusal. See docs/keyrelease.md for the protocol and the threat model.
"""
