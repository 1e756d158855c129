"""The device mesh and the two shardings training uses: batch over ``data``, the rest replicated.

One mesh axis, ``data``, spans every device of every process. Batches are split along it;
parameters and optimiser state are replicated. The same code runs on one CPU, several CPU
devices, one GPU, several GPUs and several hosts.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Calls ``jax.distributed.initialize`` when the run is launched on several processes.

    The launch is recognised from ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` (set them on every host), or from a cluster environment JAX detects by
    itself (SLURM, Open MPI, Kubernetes, Cloud TPU) when ``IFE_JAX_DISTRIBUTED=1``.
    Must run before any other JAX call.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif os.environ.get("IFE_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def make_mesh() -> Mesh:
    """A 1-D mesh named ``data`` over all devices of all processes."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``; other axes whole."""
    return NamedSharding(mesh, jax.P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, jax.P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """The part of a global batch one process loads.

    Raises:
      ValueError: if the global batch does not split evenly over the devices.
    """
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"batch_size={global_batch_size} must be divisible by the number of devices ({devices})"
        )
    return global_batch_size // jax.process_count()


def shard_batch(local_batch, mesh: Mesh):
    """Assembles each process's part of the batch into global arrays sharded over ``data``.

    Args:
      local_batch: pytree of NumPy arrays whose leading axis is this process's share of the
        global batch (the whole batch on one process).

    Returns:
      The same pytree of global ``jax.Array`` s, leading axis ``process_count`` times longer.
    """
    sharding = batch_sharding(mesh)

    def put(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, local_batch)


def gather(x: jax.Array) -> np.ndarray:
    """A global array as one NumPy array on every process (all-gathers across processes)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
