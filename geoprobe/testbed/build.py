"""Assemble a testbed from a dataset and a placement: landmarks, addresses, keys."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geoprobe.datasets import Dataset
from geoprobe.testbed import control, endpoints, keystore
from geoprobe.testbed.runner import Testbed
from geoprobe.testbed.world import World, choose_landmarks, parse_position


def build_testbed(
    dataset: Dataset,
    at: str,
    *,
    count: int | None = None,
    seed: int = 0,
    prefixes: Sequence[str] | None = None,
    bind: str | None = None,
    advertise: str | None = None,
    base_port: int = endpoints.DEFAULT_BASE_PORT,
    port: int = 0,
    keys_dir: Path | None = None,
    jitter: bool = True,
    name: str = control.DEFAULT_NAME,
) -> Testbed:
    """A testbed with the VM at ``at`` (a server name/id, or ``LAT,LON``); not started yet.

    A VM placed at a server does not get that server as a landmark (it would pin the answer);
    the rest of the dataset, or ``count`` of it drawn with ``seed``, are the landmarks.
    """
    own = None if parse_position(at) is not None else dataset.index[dataset.find(at).id]
    indices = choose_landmarks(dataset, exclude=own, count=count, seed=seed)
    world = World(dataset, indices, seed=seed, jitter=jitter)
    world.place(at)
    eps = endpoints.plan(
        indices, prefixes=prefixes, bind=bind, advertise=advertise, base_port=base_port, port=port
    )
    keys = keystore.landmark_keys(world.ids, keys_dir)
    return Testbed(world, eps, keys, name=name)
