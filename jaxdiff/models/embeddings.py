"""Sinusoidal timestep embedding (Ho et al. 2020, Appendix B; Vaswani et al. 2017, Sec. 3.5)."""

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(
    t: jax.Array, dim: int, *, max_period: float = 10_000.0
) -> jax.Array:
  """Embeds timesteps as in DDPM's ``get_timestep_embedding`` (Ho et al. 2020).

  With ``half = dim // 2`` and frequencies ``f_i = max_period ** (-i / (half - 1))``
  for ``i = 0 .. half - 1``, the embedding of ``t`` is
  ``[sin(t f_0), ..., sin(t f_{half-1}), cos(t f_0), ..., cos(t f_{half-1})]``.

  ``t`` may be integer timesteps or floats: the embedding is a smooth function of
  ``t``, so continuous-time models can pass e.g. ``t * 999`` for ``t`` in
  ``[eps, 1]``; the caller chooses that scaling. Always computed in float32.

  Args:
    t: timesteps, shape ``[B]``, integer or float.
    dim: embedding width, even and at least 4.
    max_period: the longest wavelength, ``2 pi max_period``.

  Returns:
    float32 array of shape ``[B, dim]``.
  """
  if dim < 4 or dim % 2:
    raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
  if jnp.ndim(t) != 1:
    raise ValueError(f"t must have shape [B], got shape {jnp.shape(t)}")
  half = dim // 2
  freqs = jnp.exp(
      -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1)
  )
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
