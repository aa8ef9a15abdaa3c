"""Shardings of the training job: multi-process start-up and the train state's layout.

The global batch is split along the "data" axis of `jaxdiff.parallel.make_mesh`;
parameters, EMA parameters and optimizer state are replicated, or, with
`shard_params=True`, each large array is split along its largest axis divisible by the
device count (ZeRO-3 / FSDP style: XLA all-gathers it where used).
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiff.parallel import DATA_AXIS, replicated


def initialize_distributed(*, coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize` for a multi-process launch.

  With no arguments JAX detects the cluster (TPU pods, SLURM, Open MPI, ...); pass all three
  for a manual launch (e.g. several processes on localhost). Must run before any other JAX
  call. Single-process runs do not need it.
  """
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def fsdp_spec(shape: tuple[int, ...], *, num_shards: int, min_size: int) -> PartitionSpec:
  """Splits the largest axis divisible by `num_shards` of arrays with >= min_size elements.

  Smaller arrays, and arrays with no divisible axis, are replicated.
  """
  if int(np.prod(shape)) < min_size:
    return PartitionSpec()
  divisible = [axis for axis, size in enumerate(shape) if size % num_shards == 0]
  if not divisible:
    return PartitionSpec()
  axis = max(divisible, key=lambda a: shape[a])
  return PartitionSpec(*([None] * axis + [DATA_AXIS]))


def state_shardings(abstract_state: Any, mesh: Mesh, *, shard_params: bool,
                    min_size: int) -> Any:
  """Shardings for every array leaf of a (possibly abstract) train state pytree.

  Replicated unless `shard_params`, in which case each leaf follows `fsdp_spec`; the Adam
  moments and EMA copy of a parameter get the parameter's sharding since they share its shape.
  """
  def leaf_sharding(leaf: Any) -> NamedSharding:
    if not shard_params:
      return replicated(mesh)
    return NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), num_shards=mesh.size,
                                         min_size=min_size))

  return jax.tree.map(leaf_sharding, abstract_state)
