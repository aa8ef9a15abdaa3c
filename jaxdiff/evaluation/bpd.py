"""Test-set negative log-likelihood bound in bits/dim (Ho et al., 2020, eq. 5 and Sec. 4.2).

Each test image gets the full variational bound L_T + sum_{t} L_t from `losses.calc_bpd`
(every timestep, independent noise per timestep); the data set's value is the mean over
images, reported with its standard error s / sqrt(N) (s the sample standard deviation of
the per-image bounds), as Nichol & Dhariwal (2021) report NLL.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh

from jaxdiff import losses, parallel
from jaxdiff.evaluation.batching import map_batches
from jaxdiff.schedules import Schedule

ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class BpdResult:
  """The bound of a data set: `bpd` = `prior_bpd` + `vb.sum()`, each a mean over images."""
  bpd: float              # mean total bound, bits/dim
  stderr: float           # standard error of `bpd`
  prior_bpd: float        # mean L_T
  vb: np.ndarray          # [T] mean L_t, column t = timestep t (t = 0 is the decoder NLL)
  per_example: np.ndarray  # [N] total bound of each image
  num_examples: int


@functools.partial(jax.jit, static_argnames=("apply_fn", "options"))
def _batch_bpd(params: Any, schedule: Schedule, x0: jax.Array, key: jax.Array, *,
               apply_fn: ApplyFn, options: tuple[tuple[str, Any], ...]
               ) -> dict[str, jax.Array]:
  """`losses.calc_bpd` of one batch, keeping the terms the data-set bound needs."""
  terms = losses.calc_bpd(lambda x_t, t: apply_fn(params, x_t, t), schedule, x0, key,
                          **dict(options))
  return {key_: terms[key_] for key_ in ("total_bpd", "prior_bpd", "vb")}


def dataset_bpd(apply_fn: ApplyFn, params: Any, schedule: Schedule, images: np.ndarray, *,
                rng: jax.Array, batch_size: int, mesh: Optional[Mesh] = None,
                on_batch: Optional[Callable[[int, int], None]] = None,
                **p_mean_variance_kwargs: Any) -> BpdResult:
  """Bits/dim bound of float `images` [N, H, W, C] in [-1, 1] under `apply_fn(params, x_t, t)`.

  Batches are sharded over `mesh` (default: all devices), parameters replicated; batch i
  uses the key `fold_in(rng, i)`. `apply_fn` is a static jit argument: pass the same
  function object (e.g. `model.apply`) to reuse the compilation. `p_mean_variance_kwargs` (prediction, variance,
  clip_denoised) pass to `losses.calc_bpd`. Needs N >= 2 for the standard error.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = jax.device_put(params, parallel.replicated(mesh))
  options = tuple(sorted(p_mean_variance_kwargs.items()))
  return dataset_bound(
      lambda batch, key: _batch_bpd(params, schedule, batch, key, apply_fn=apply_fn,
                                    options=options),
      images, rng=rng, batch_size=batch_size, mesh=mesh, on_batch=on_batch)


def dataset_bound(batch_bound: Callable[[jax.Array, jax.Array], dict[str, jax.Array]],
                  images: np.ndarray, *, rng: jax.Array, batch_size: int,
                  mesh: Optional[Mesh] = None,
                  on_batch: Optional[Callable[[int, int], None]] = None) -> BpdResult:
  """The data set's mean bound and its standard error from ``batch_bound(batch, key) ->
  {"total_bpd": [b], "prior_bpd": [b], "vb": [b, T]}`` of any model family, over float
  `images` [N >= 2, H, W, C] in sharded batches (batch i with key `fold_in(rng, i)`)."""
  images = np.asarray(images)
  if images.ndim != 4 or len(images) < 2 or not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"dataset_bpd: expected images [N >= 2, H, W, C] of floats in [-1, 1], "
                     f"got {images.dtype} {images.shape}")
  terms = map_batches(lambda batch, index: batch_bound(batch, jax.random.fold_in(rng, index)),
                      images, batch_size=batch_size, mesh=mesh, on_batch=on_batch)
  total = terms["total_bpd"].astype(np.float64)
  return BpdResult(bpd=float(total.mean()),
                   stderr=float(total.std(ddof=1) / math.sqrt(len(total))),
                   prior_bpd=float(terms["prior_bpd"].astype(np.float64).mean()),
                   vb=terms["vb"].astype(np.float64).mean(axis=0),
                   per_example=total, num_examples=len(total))
