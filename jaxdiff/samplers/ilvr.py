"""ILVR: iterative latent variable refinement (Choi et al. 2021, Algorithm 1, eq. 8), for
every sampler of the runner.

After every step of any sampler, at the grid point t the step reached, the low-pass content
of the state is replaced by that of the reference noised to the same level:

    x <- x - phi_N(x) + phi_N(y_t),    y_t ~ q(y_t | y_0 = reference),

and at the end x <- x - phi_N(x) + phi_N(reference). Here phi_N is
`jaxdiff.resampling.low_pass` (the mean of each N x N block, repeated over it): an
orthogonal projection, so the output's low-pass component equals the reference's exactly
(up to rounding), whatever the model; N chooses how much is inherited (N = 1 copies the
reference, larger N only coarser structure). Choi et al. use a bicubic resizer pair for
phi_N, which is not a projection; the block mean makes the guarantee exact.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jaxdiff import resampling
from jaxdiff.samplers import checks

Array = Any


def replace_low_pass(x: Array, reference: Array, factor: int) -> Array:
  """x - phi_N(x) + phi_N(reference) (Choi et al. 2021, eq. 8)."""
  return x - resampling.low_pass(x, factor) + resampling.low_pass(reference.astype(x.dtype),
                                                                  factor)


def check_reference(reference: Array, factor: Any, shape: tuple[int, ...]) -> int:
  """The factor N as an int, or ValueError when the reference or N does not fit ``shape``."""
  if factor is None:
    raise ValueError("ILVR needs both reference= (the image) and ilvr_factor= (N)")
  checks.check_array("reference", reference, shape)
  if len(shape) != 4:
    raise ValueError(f"ILVR needs NHWC images, got the shape {shape}")
  factor = checks.check_positive_int("ilvr_factor", factor)
  if shape[1] % factor or shape[2] % factor:
    raise ValueError(f"ilvr_factor={factor} does not divide the image size "
                     f"{shape[1]}x{shape[2]}")
  return factor


def low_pass_error(x: Array, reference: Array, factor: int) -> Array:
  """max |phi_N(x) - phi_N(reference)| per example [B]: how far ILVR's guarantee is met."""
  diff = resampling.low_pass(x, factor) - resampling.low_pass(reference, factor)
  return jnp.max(jnp.abs(diff.reshape(diff.shape[0], -1)), axis=1)
