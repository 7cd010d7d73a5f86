"""Signals from inside the guest that a live migration leaves behind (see ``base`` for the API)."""

from geoprobe.watch.signals.base import BackgroundSignal, Reading, Signal

__all__ = ["BackgroundSignal", "Reading", "Signal"]
