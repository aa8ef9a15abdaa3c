"""The device mesh that data-parallel code shares: one "data" axis over every device.

It is built with `jax.sharding.Mesh`, whose axes are of type Auto: shardings are given
explicitly at the jit boundary (in_shardings / out_shardings) and XLA's partitioner
propagates them inside. Batches are split along "data"; other arrays are replicated
(the training job's FSDP-style state shardings are in `jaxdiff.job.distributed`).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D ("data",) mesh over `devices` (default: all), ordered by process then id.

  The ordering makes each process's share of a batch-sharded array one contiguous block of
  rows, which is what the input pipeline reads.
  """
  devices = jax.devices() if devices is None else devices
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(ordered), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"; other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())
