"""The loopback testbed: a world of emulated signed landmarks for tests, demos and the QEMU lab.

- ``world``: which dataset servers are landmarks, where the VM stands, path delays per landmark;
- ``delays``: per-pair jitter and the distance model that places the VM anywhere;
- ``builtin``: the offline world of ``geoprobe demo`` (cities + physical delay model);
- ``endpoints``, ``keystore``: where landmarks listen, and their signing keys;
- ``runner``: the responders and the control socket; ``control``: how ``testbed move`` finds them;
- ``build``: assembles all of it from a dataset and a placement.
"""

from geoprobe.testbed.build import build_testbed
from geoprobe.testbed.runner import BackgroundTestbed, Testbed
from geoprobe.testbed.world import Placement, World

__all__ = ["BackgroundTestbed", "Placement", "Testbed", "World", "build_testbed"]
