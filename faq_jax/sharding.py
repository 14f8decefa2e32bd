"""Data-parallel mesh and the host-to-global-array step.

One mesh axis, ``data``: parameters are replicated, batches are split along their example
axis across every device of every process. Each process hands over only its own rows
(``jax.make_array_from_process_local_data``), so multi-host needs no other code path.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D ``data`` mesh over all (or the given) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Splits axis ``batch_axis`` over ``data`` (axis 1 for [accum, micro, ...] batches)."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA))


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding,
              ) -> dict[str, jax.Array]:
    """Process-local NumPy rows -> one global jax.Array per key."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device (same value in every process).

    Arrays already replicated over ``mesh`` are returned as they are (no host round trip).
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(np.asarray(x), sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(put, tree)


def padded_eval_batch(eval_batch_size: int) -> tuple[int, int]:
    """(global, per-process) evaluation batch: ``eval_batch_size`` rounded up to a multiple
    of the device count, so any size works on any mesh. Evaluation is masked, so the extra
    rows (more examples, or padding in the last batch) never change a result."""
    n_dev = jax.device_count()
    padded = -(-int(eval_batch_size) // n_dev) * n_dev
    return padded, padded // jax.process_count()


def check_divisible(global_batch: int, what: str) -> int:
    """The per-process share of ``global_batch``; ValueError if devices do not divide it."""
    n_dev, n_proc = jax.device_count(), jax.process_count()
    if global_batch % n_dev:
        raise ValueError(f"{what}={global_batch} is not divisible by the {n_dev} devices; "
                         f"use a multiple of {n_dev}")
    return global_batch // n_proc
