"""Residency attestations an auditor can check without trusting the VM (docs/attestation.md).

Per period, the VM signs one in-toto Statement in a DSSE envelope: the allowed set, the verdict,
the sound region's certificate from landmark-timed RTTs only, the landmark-signed statements it
rests on, and the period's events. Statements form a hash chain, so a missing period is a gap.
"""
