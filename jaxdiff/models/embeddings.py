"""Sinusoidal embeddings: timesteps (Ho et al. 2020, App. B; Vaswani et al. 2017, Sec. 3.5)
and 2-D patch positions (Peebles & Xie 2023, Sec. 3.2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_embedding(
    t: jax.Array, dim: int, *, max_period: float = 10_000.0, flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
) -> jax.Array:
  """Embeds timesteps as in DDPM's ``get_timestep_embedding`` (Ho et al. 2020).

  With ``half = dim // 2`` and frequencies
  ``f_i = max_period ** (-i / (half - freq_shift))`` for ``i = 0 .. half - 1``, the
  embedding of ``t`` is ``[sin(t f_0), ..., sin(t f_{half-1}), cos(t f_0), ...,
  cos(t f_{half-1})]``, or cosines first with ``flip_sin_to_cos``. The defaults are
  DDPM's; ADM (Dhariwal & Nichol 2021) and DiT (Peebles & Xie 2023) use
  ``flip_sin_to_cos=True, freq_shift=0``.

  ``t`` may be integer timesteps or floats: the embedding is a smooth function of
  ``t``, so continuous-time models can pass e.g. ``t * 999`` for ``t`` in
  ``[eps, 1]``; the caller chooses that scaling. Always computed in float32.

  Args:
    t: timesteps, shape ``[B]``, integer or float.
    dim: embedding width, even and at least 4.
    max_period: the longest wavelength, ``2 pi max_period``.
    flip_sin_to_cos: put the cosines first.
    freq_shift: the ``s`` in the exponent's denominator ``half - s``.

  Returns:
    float32 array of shape ``[B, dim]``.
  """
  if dim < 4 or dim % 2:
    raise ValueError(f"embedding dim must be even and >= 4, got {dim}")
  if jnp.ndim(t) != 1:
    raise ValueError(f"t must have shape [B], got shape {jnp.shape(t)}")
  half = dim // 2
  freqs = jnp.exp(
      -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
  )
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  parts = [jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)]
  return jnp.concatenate(parts, axis=-1)


def sincos_position_embedding_2d(height: int, width: int, dim: int) -> np.ndarray:
  """Fixed 2-D sine-cosine position embeddings of a ``height x width`` grid of patches.

  DiT's (Peebles & Xie 2023, Sec. 3.2, after MAE, He et al. 2022): token ``(i, j)``
  (row-major, ``i`` the row) gets ``[E(j), E(i)]``, where ``E(p)`` of width ``dim / 2``
  is ``[sin(p w_0), ..., sin(p w_{m-1}), cos(p w_0), ..., cos(p w_{m-1})]`` with
  ``m = dim / 4`` and ``w_k = 10000 ** (-k / m)``. Computed in float64 with NumPy.

  Returns:
    float32 ``[height * width, dim]``.
  """
  if dim < 4 or dim % 4:
    raise ValueError(f"2-D position embedding dim must be a positive multiple of 4, got {dim}")
  m = dim // 4
  omega = 1.0 / 10_000.0 ** (np.arange(m, dtype=np.float64) / m)
  rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                           np.arange(width, dtype=np.float64), indexing="ij")

  def embed(positions: np.ndarray) -> np.ndarray:
    args = positions.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(args), np.cos(args)], axis=1)

  return np.concatenate([embed(cols), embed(rows)], axis=1).astype(np.float32)
