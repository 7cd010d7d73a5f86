"""Probing landmarks: signed UDP echo, TCP connect and ICMP echo behind one interface.

``measure(landmarks, method)`` returns one :class:`~geoprobe.measurement.Measurement` per landmark
with every sample, the failure reason if none came back, and (signed echo) the evidence.
"""

from geoprobe.probe.scheduler import measure, measure_async

__all__ = ["measure", "measure_async"]
