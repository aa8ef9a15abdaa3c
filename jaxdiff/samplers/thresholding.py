"""Dynamic thresholding of the predicted x_0; Saharia et al. 2022 (Imagen), Sec. 2.3."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def dynamic_threshold(x0: Array, *, percentile: float | Array = 99.5) -> Array:
  """Saharia et al. 2022, Sec. 2.3: s = max(percentile_p(|x_0|), 1); x_0 <- clip(x_0, -s, s) / s.

  s is computed per example over all its pixels, so saturated predictions are pushed
  inwards instead of clipped flat; an example with every value in [-1, 1] is unchanged.
  Pass it to a sampler as ``denoised_fn=jax.tree_util.Partial(dynamic_threshold,
  percentile=p)``; the samplers' static clip to [-1, 1] then changes nothing.

  Args:
    x0: predicted x_0, [B, ...].
    percentile: p in [0, 100].

  Raises:
    ValueError: if percentile is outside [0, 100] or x0 has no batch axis.
  """
  if not isinstance(percentile, jax.core.Tracer) and not 0.0 <= float(percentile) <= 100.0:
    raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")
  if jnp.ndim(x0) < 1:
    raise ValueError(f"x0 must have a batch axis, got shape {jnp.shape(x0)}")
  flat = jnp.abs(x0).reshape(x0.shape[0], -1)
  s = jnp.maximum(jnp.percentile(flat, percentile, axis=1), 1.0).astype(x0.dtype)
  s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
  return jnp.clip(x0, -s, s) / s
