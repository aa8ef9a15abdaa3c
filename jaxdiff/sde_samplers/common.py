"""Pieces shared by the SDE samplers: the initial state, validation and the data prediction."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff import sde as sde_lib

Array = jax.Array


def batch_time(t: Array, x: Array) -> Array:
  """A scalar time broadcast to the [B] vector that score functions take."""
  return jnp.full((x.shape[0],), t, dtype=x.dtype)


def initial_state(sde: Any, rng: Array, shape: tuple[int, ...], x_T: Array | None) -> Array:
  """x_T drawn from the SDE's prior, or the given x_T after checking its shape."""
  if x_T is None:
    return sde.prior_sampling(rng, shape)
  if tuple(x_T.shape) != tuple(shape):
    raise ValueError(f"x_T has shape {x_T.shape}, expected {tuple(shape)}")
  return x_T


def validate(score_fn: sde_lib.ScoreFn, shape: tuple[int, ...], eps: float) -> None:
  """Raises ValueError for eps outside (0, 1) or a score_fn whose output is not shaped as x."""
  sde_lib.check_eps(eps)
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  t = jax.ShapeDtypeStruct((shape[0],), jnp.float32)
  sde_lib.check_score_fn(score_fn, x, t)


def check_name(name: str, valid: dict[str, Any] | tuple[str, ...], what: str) -> None:
  """Raises ValueError for a name that is not one of `valid`, listing the valid ones."""
  if name not in valid:
    raise ValueError(f"unknown {what} {name!r}; valid names are {sorted(valid)}")


def data_prediction(score_fn: sde_lib.ScoreFn, sde: Any) -> Callable[[Array, Array], Array]:
  """x0_theta(x, t) = (x + sigma_t^2 score(x, t)) / alpha_t, Tweedie's formula for
  x_t = alpha_t x0 + sigma_t z (Lu et al. 2022b, "DPM-Solver++", eq. 5 with eps = -sigma score;
  Karras et al. 2022's denoiser D)."""
  def predict(x: Array, t: Array) -> Array:
    alpha, sigma = sde.marginal_coeffs(t)
    score = score_fn(x, t)
    return (x + sde_lib.broadcast_to_x(sigma**2, x) * score) / sde_lib.broadcast_to_x(alpha, x)
  return predict
