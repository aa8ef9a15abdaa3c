"""EDM's preconditioning and training objective (Karras, Aittala, Aila & Laine 2022).

A network F_theta is wrapped into the denoiser (Table 1, "ours"; eq. 7)

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x, c_noise(sigma)),
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),
    c_noise = ln(sigma) / 4,

so that F's input has unit variance and its effective target (eq. 8)

    F_target = (x_0 - c_skip (x_0 + sigma n)) / c_out

has unit variance at every sigma when the data has standard deviation sigma_data. Training
draws ln(sigma) ~ N(P_mean, P_std^2) and weights ||D - x_0||^2 by lambda(sigma) = (sigma^2 +
sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2, i.e. it regresses F onto F_target with
unit weight (Sec. 5, "loss weighting"). `precondition` works on any process of
`jaxdiff.processes` by EDM's scaled variables (Table 1 with s(t) = alpha_t): x_hat = x /
alpha_t at sigma_hat = sigma_t / alpha_t.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxdiff.processes import EDMProcess, broadcast_to_x

Array = Any
NetFn = Callable[[Array, Array], Array]


def preconditioning(sigma: Array, sigma_data: Array | float) -> tuple[Array, Array, Array, Array]:
  """(c_skip, c_out, c_in, c_noise) at noise levels ``sigma`` (Karras et al. 2022, Table 1)."""
  total = sigma**2 + sigma_data**2
  return (sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total),
          0.25 * jnp.log(sigma))


def loss_weight(sigma: Array, sigma_data: Array | float) -> Array:
  """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (Table 1)."""
  return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _preconditioned(net_fn: NetFn, process: Any, sigma_data: Any, x: Array,
                    t: Array) -> Array:
  """D(x_hat; sigma_hat) of the module docstring at the process time t [B]: the x0
  prediction."""
  alpha, sigma = process.marginal_coeffs(t)
  sigma_hat = (sigma / alpha).astype(x.dtype)
  x_hat = x / broadcast_to_x(alpha, x).astype(x.dtype)
  c_skip, c_out, c_in, c_noise = preconditioning(sigma_hat, sigma_data)
  out = net_fn(broadcast_to_x(c_in, x) * x_hat, c_noise)
  return broadcast_to_x(c_skip, x) * x_hat + broadcast_to_x(c_out, x) * out


def precondition(net_fn: NetFn, *, sigma_data: float = 0.5,
                 process: Optional[Any] = None) -> Callable[[Array, Array], Array]:
  """The x0-predicting ``model_fn(x_t, t)`` of a raw network ``net_fn(x_in, c_noise)`` under
  EDM's preconditioning (module docstring) on ``process`` (default: `EDMProcess`, whose time
  is sigma); use it with ``make_denoiser(..., prediction="x0")``. A pytree (a
  ``jax.tree_util.Partial``): a network given as a Partial of its parameters keeps the
  samplers' compiled programs.

  Raises:
    ValueError: if sigma_data is not positive.
  """
  if not float(sigma_data) > 0:
    raise ValueError(f"sigma_data must be positive, got {sigma_data}")
  process = EDMProcess() if process is None else process
  return jax.tree_util.Partial(_preconditioned, net_fn, process, float(sigma_data))


def sample_sigma(rng: Array, shape: tuple[int, ...], *, p_mean: float = -1.2,
                 p_std: float = 1.2) -> Array:
  """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (Table 1)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, shape))


def edm_loss(net_fn: NetFn, x0: Array, rng: Array, *, sigma_data: float = 0.5,
             p_mean: float = -1.2, p_std: float = 1.2) -> Array:
  """Per-example lambda(sigma) ||D(x_0 + sigma n; sigma) - x_0||^2, the mean over pixels
  (Karras et al. 2022, eq. 2 and 8 with Table 1's sigma distribution and weight), [B]."""
  sigma_rng, noise_rng = jax.random.split(rng)
  sigma = sample_sigma(sigma_rng, x0.shape[:1], p_mean=p_mean, p_std=p_std).astype(x0.dtype)
  noisy = x0 + broadcast_to_x(sigma, x0) * jax.random.normal(noise_rng, x0.shape, x0.dtype)
  denoised = precondition(net_fn, sigma_data=sigma_data)(noisy, sigma)
  error = jnp.mean(jnp.reshape((denoised - x0) ** 2, (x0.shape[0], -1)), axis=1)
  return loss_weight(sigma, sigma_data) * error
