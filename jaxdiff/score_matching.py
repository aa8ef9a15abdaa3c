"""Score-matching objectives, each returning a per-example loss of shape [B].

- explicit_score_matching_loss: Hyvarinen 2005, eq. 4 (exact Jacobian trace; small dimension).
- sliced_score_matching_loss: Song, Garg, Shi & Ermon 2019 ("Sliced Score Matching"), eq. 7
  (SSM) and eq. 8 (SSM-VR); random projections, one Jacobian-vector product each.
- denoising_score_matching_loss: Vincent 2011, eq. 11, at one noise level sigma.
- ncsn_loss: Song & Ermon 2019, eq. 5-6, over a geometric sigma ladder with lambda = sigma^2.
- continuous_dsm_loss: Song et al. 2021, eq. 7, for an SDE, with lambda(t) = sigma_t^2 or the
  likelihood weighting lambda(t) = g(t)^2 (Song, Durkan, Murray & Ermon 2021, Thm. 1).

Unconditional score models are `score_fn(x) -> score` on batches; the noise-conditional NCSN
model is `score_fn(x, sigma)` with sigma of shape [B]; the SDE model is `score_fn(x, t)`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sde as sde_lib

Array = jax.Array

_PROJECTIONS = ("gaussian", "rademacher")


def _flat(x: Array) -> Array:
  return jnp.reshape(x, (x.shape[0], -1))


def _check_same_shape(out: Any, x: Array, what: str) -> None:
  if out.shape != x.shape:
    raise ValueError(f"{what} must return an array shaped like x {x.shape}, got {out.shape}")


def _per_example(score_fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
  """score_fn on one flattened example, for per-example Jacobians of a batched model."""
  def single(xi_flat: Array, like: Array) -> Array:
    return jnp.ravel(score_fn(jnp.reshape(xi_flat, (1,) + like.shape))[0])
  return single


def explicit_score_matching_loss(score_fn: Callable[[Array], Array], x: Array) -> Array:
  """Hyvarinen 2005, eq. 4: tr(d s / d x) + ||s(x)||^2 / 2 per example, with the exact trace.

  The Jacobian costs one forward-mode pass per dimension: for small dimension only.
  """
  _check_same_shape(jax.eval_shape(score_fn, x), x, "score_fn")
  single = _per_example(score_fn)

  def one(xi: Array) -> Array:
    flat = jnp.ravel(xi)
    jac = jax.jacfwd(single)(flat, xi)
    s = single(flat, xi)
    return jnp.trace(jac) + 0.5 * jnp.sum(s**2)

  return jax.vmap(one)(x)


def sliced_score_matching_loss(score_fn: Callable[[Array], Array], x: Array, rng: Array, *,
                               num_projections: int = 1, projection: str = "gaussian",
                               variance_reduction: bool = False) -> Array:
  """Sliced score matching (Song et al. 2019, eq. 7): v^T (ds/dx) v + (v^T s)^2 / 2, averaged over
  `num_projections` random directions v with E[v v^T] = I ("gaussian" or "rademacher").

  With variance_reduction=True it is SSM-VR (eq. 8): v^T (ds/dx) v + ||s||^2 / 2. Both are
  unbiased for the explicit score-matching loss, whose expectation they share.
  """
  if projection not in _PROJECTIONS:
    raise ValueError(f"unknown projection {projection!r}; valid: {list(_PROJECTIONS)}")
  if num_projections < 1:
    raise ValueError(f"num_projections must be >= 1, got {num_projections}")
  shape = (num_projections,) + x.shape
  if projection == "gaussian":
    v = jax.random.normal(rng, shape, x.dtype)
  else:
    v = jax.random.rademacher(rng, shape, x.dtype)

  def one_projection(vk: Array) -> Array:
    s, jvp = jax.jvp(score_fn, (x,), (vk,))
    _check_same_shape(s, x, "score_fn")
    second = jnp.sum(_flat(s) ** 2, axis=1) if variance_reduction else jnp.sum(
        _flat(vk * s), axis=1) ** 2
    return jnp.sum(_flat(vk * jvp), axis=1) + 0.5 * second

  return jnp.mean(jax.vmap(one_projection)(v), axis=0)


def _denoising_residual(score: Array, x: Array, noise: Array, sigma: Array) -> Array:
  """||sigma s(x + sigma z) + z||^2 per example, the sigma^2-weighted DSM residual."""
  return jnp.sum(_flat(sde_lib.broadcast_to_x(sigma, x) * score + noise) ** 2, axis=1)


def denoising_score_matching_loss(score_fn: Callable[[Array], Array], x: Array, rng: Array, *,
                                  sigma: float) -> Array:
  """Vincent 2011, eq. 11: ||s(x~) - (x - x~) / sigma^2||^2 / 2 with x~ = x + sigma z.

  Its minimizer is the score of the data convolved with N(0, sigma^2 I).
  """
  if not sigma > 0:
    raise ValueError(f"sigma must be positive, got {sigma}")
  noise = jax.random.normal(rng, x.shape, x.dtype)
  score = score_fn(x + sigma * noise)
  _check_same_shape(score, x, "score_fn")
  sig = jnp.full((x.shape[0],), sigma, x.dtype)
  return 0.5 * _denoising_residual(score, x, noise, sig) / sigma**2


def ncsn_loss(score_fn: Callable[[Array, Array], Array], x: Array, rng: Array, *,
              sigmas: Array) -> Array:
  """NCSN objective (Song & Ermon 2019, eq. 5-6): a level sigma_i is drawn uniformly per example
  and lambda(sigma) = sigma^2 weights its DSM loss: ||sigma s(x~, sigma) + z||^2 / 2.

  `sigmas` is the noise ladder (e.g. `jaxdiff.sde.geometric_sigmas`); score_fn(x, sigma) receives
  the drawn sigma of each example, shape [B].
  """
  sigmas = jnp.asarray(sigmas)
  if sigmas.ndim != 1:
    raise ValueError(f"sigmas must be a 1-D ladder, got shape {sigmas.shape}")
  rng_level, rng_noise = jax.random.split(rng)
  level = jax.random.randint(rng_level, (x.shape[0],), 0, sigmas.shape[0])
  sigma = sigmas[level].astype(x.dtype)
  noise = jax.random.normal(rng_noise, x.shape, x.dtype)
  score = score_fn(x + sde_lib.broadcast_to_x(sigma, x) * noise, sigma)
  _check_same_shape(score, x, "score_fn")
  return 0.5 * _denoising_residual(score, x, noise, sigma)


def continuous_dsm_loss(score_fn: sde_lib.ScoreFn, sde: Any, x0: Array, rng: Array, *,
                        eps: float = 1e-5, likelihood_weighting: bool = False,
                        reduce_mean: bool = False) -> Array:
  """Continuous-time denoising score matching (Song et al. 2021, eq. 7), t ~ U(eps, 1):

      lambda(t) ||s(x_t, t) + z / sigma_t||^2 / 2,   x_t = alpha_t x0 + sigma_t z,

  with lambda(t) = sigma_t^2 (default) or lambda(t) = g(t)^2 (likelihood_weighting, Song et al.
  2021b, Thm. 1: the loss then bounds the negative log-likelihood). reduce_mean averages over
  the non-batch dimensions instead of summing (score_sde's `reduce_mean`).
  """
  sde_lib.check_eps(eps)
  rng_t, rng_z = jax.random.split(rng)
  t = jax.random.uniform(rng_t, (x0.shape[0],), x0.dtype, eps, 1.0)
  noise = jax.random.normal(rng_z, x0.shape, x0.dtype)
  mean, sigma = sde.marginal_prob(x0, t)
  score = score_fn(mean + sde_lib.broadcast_to_x(sigma, x0) * noise, t)
  _check_same_shape(score, x0, "score_fn")
  residual = _denoising_residual(score, x0, noise, sigma)
  if likelihood_weighting:
    _, g = sde.sde(x0, t)
    residual = residual * g**2 / sigma**2
  if reduce_mean:
    residual = residual / np.prod(x0.shape[1:])
  return 0.5 * residual
