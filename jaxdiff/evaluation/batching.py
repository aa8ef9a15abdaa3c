"""Evaluates a per-example function over a data set in fixed-size batches sharded over devices.

Every batch has the same shape (the last one is zero-padded and the padding dropped from
the outputs), so a jitted function compiles once; each batch is split along its leading
axis over a 1-D mesh of all devices (`jaxdiff.parallel`), and jit runs the computation
data-parallel where the data lies.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxdiff import parallel

BatchFn = Callable[[jax.Array, int], Any]


def map_batches(fn: BatchFn, data: np.ndarray, *, batch_size: int,
                mesh: Optional[Mesh] = None,
                on_batch: Optional[Callable[[int, int], None]] = None) -> Any:
  """Applies `fn(batch, batch_index)` to `data` [N, ...] in sharded batches of `batch_size`
  (rounded up to a multiple of the device count).

  `fn` returns a pytree of arrays with leading axis `batch_size`; the result is that pytree
  with the per-batch outputs concatenated as NumPy arrays of leading size N. `on_batch(done,
  total)` is called after each batch (for progress reports).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  if batch_size < 1:
    raise ValueError(f"map_batches: batch_size must be >= 1, got {batch_size}")
  batch_size = -(-batch_size // mesh.size) * mesh.size
  data = np.asarray(data)
  if data.ndim < 1 or len(data) == 0:
    raise ValueError(f"map_batches: expected a non-empty array [N, ...], got shape "
                     f"{data.shape}")
  sharding = parallel.batch_sharding(mesh)
  num_batches = -(-len(data) // batch_size)
  outputs = []
  for index in range(num_batches):
    batch = data[index * batch_size:(index + 1) * batch_size]
    size = len(batch)
    if size < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - size,) + batch.shape[1:],
                                              batch.dtype)])
    placed = jax.make_array_from_callback(batch.shape, sharding, lambda idx, b=batch: b[idx])
    result = multihost_utils.process_allgather(fn(placed, index), tiled=True)
    outputs.append(jax.tree.map(lambda leaf, n=size: np.asarray(leaf)[:n], result))
    if on_batch is not None:
      on_batch(index + 1, num_batches)
  return jax.tree.map(lambda *leaves: np.concatenate(leaves), *outputs)
