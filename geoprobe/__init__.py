"""geoprobe: locate a VM from inside by RTTs to landmarks, detect migration, defend."""

from __future__ import annotations

__version__ = "0.1.0"
