"""Consistency models: the boundary-condition parameterization, curricula and losses.

A consistency model f(x, sigma) maps every point of a probability-flow ODE trajectory to its
origin at sigma_min (Song et al. 2023, "Consistency models", Def. 1). It lives on EDM's
noise-level axis (`jaxdiff.processes.EDMProcess`, x = x_0 + sigma n) and satisfies the
boundary condition f(x, sigma_min) = x by construction (Song et al. 2023, eq. 5 and App. C):

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma)),
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out  = sigma_data (sigma - sigma_min) / sqrt(sigma_data^2 + sigma^2),
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)                 (Karras et al. 2022, Table 1).

Training (Song et al. 2023, Algorithms 2 and 3) draws n over the discretization
sigma_min = t_1 < ... < t_N = sigma_max (Karras et al. 2022, eq. 5) and minimizes

    lambda(t_n) d(f_theta(x_{t_(n+1)}, t_(n+1)), f_theta-(x_hat_{t_n}, t_n)),

where x_{t_(n+1)} = x_0 + t_(n+1) z and x_hat_{t_n} is one ODE step of a teacher
(consistency distillation, CD) or x_0 + t_n z with the same z (consistency training, CT);
theta- is the target network (an EMA of theta, or theta itself under a stop-gradient for
improved CT, Song & Dhariwal 2024, Sec. 3.2). The curricula N(k), the target decay mu(k), the
pseudo-Huber metric and the lognormal choice of n of improved CT are below.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.processes import broadcast_to_x

Array = Any
ModelFn = Callable[[Array, Array], Array]
ConsistencyFn = Callable[[Array, Array], Array]

SOLVERS = ("euler", "heun")
# Time input of the network: EDM's c_noise = log(sigma) / 4 (Karras et al. 2022, Table 1),
# times 1000 so that a sinusoidal embedding built for integer timesteps sees a similar range.
NOISE_EMBEDDING_SCALE = 250.0


def boundary_coefficients(sigma: Array, *, sigma_data: float,
                          sigma_min: float) -> tuple[Array, Array]:
  """(c_skip, c_out) of Song et al. 2023, App. C: c_skip(sigma_min) = 1, c_out(sigma_min) = 0."""
  c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
  c_out = sigma_data * (sigma - sigma_min) / jnp.sqrt(sigma_data**2 + sigma**2)
  return c_skip, c_out


def consistency_function(model_fn: ModelFn, x: Array, sigma: Array, *, sigma_data: float,
                         sigma_min: float) -> Array:
  """f(x, sigma) = c_skip x + c_out F(c_in x, c_noise) (module docstring), sigma [B]."""
  c_skip, c_out = boundary_coefficients(sigma, sigma_data=sigma_data, sigma_min=sigma_min)
  c_in = 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)
  out = model_fn(broadcast_to_x(c_in, x) * x, NOISE_EMBEDDING_SCALE * jnp.log(sigma))
  return broadcast_to_x(c_skip, x) * x + broadcast_to_x(c_out, x) * out


def karras_boundaries(num_scales: int, *, sigma_min: float, sigma_max: float,
                      rho: float = 7.0) -> np.ndarray:
  """t_1 < ... < t_N of Song et al. 2023 (Sec. 5; Karras et al. 2022, eq. 5), float64:
  t_i = (sigma_min^(1/rho) + (i - 1) / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho."""
  if num_scales < 2:
    raise ValueError(f"num_scales must be >= 2 (t_1 = sigma_min, t_N = sigma_max), got "
                     f"{num_scales}")
  frac = np.linspace(0.0, 1.0, num_scales)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (lo + frac * (hi - lo)) ** rho


def ct_num_scales(step: Any, *, total_steps: int, s0: int, s1: int) -> Array:
  """N(k) of consistency training (Song et al. 2023, App. C, "N(k)"):
  ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1 (k may be traced)."""
  root = jnp.sqrt(step / total_steps * ((s1 + 1) ** 2 - s0**2) + s0**2)
  return (jnp.ceil(root - 1) + 1).astype(jnp.int32)


def ict_num_scales(step: Any, *, total_steps: int, s0: int, s1: int) -> Array:
  """N(k) of improved CT (Song & Dhariwal 2024, eq. 8): min(s0 2^floor(k / K'), s1) + 1 with
  K' = floor(K / (log2 floor(s1 / s0) + 1)): the count doubles in equal stages (k may be
  traced)."""
  stage = max(math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)), 1)
  doublings = jnp.minimum(jnp.asarray(step) // stage, 62)
  return (jnp.minimum(s0 * 2.0**doublings, s1) + 1).astype(jnp.int32)


def padded_boundaries(num_scales: Array, *, size: int, sigma_min: float, sigma_max: float,
                      rho: float = 7.0) -> Array:
  """`karras_boundaries` for a traced N <= size, padded to ``size`` with sigma_max: the
  intervals past t_N have zero width (zero probability under `interval_probs`)."""
  frac = jnp.minimum(jnp.arange(size) / (num_scales - 1), 1.0)
  lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (lo + frac * (hi - lo)) ** rho


def ct_target_decay(num_scales: int, *, s0: int, mu0: float) -> float:
  """The target network's EMA decay mu(k) = exp(s0 log mu0 / N(k)) (Song et al. 2023, App. C)."""
  return math.exp(s0 * math.log(mu0) / num_scales)


def pseudo_huber(a: Array, b: Array, *, c: float) -> Array:
  """sqrt(||a - b||^2 + c^2) - c per example (Song & Dhariwal 2024, Sec. 3.3), [B], computed
  as ||a - b||^2 / (sqrt(||a - b||^2 + c^2) + c), free of cancellation for small distances."""
  sq = squared_l2(a, b)
  return sq / (jnp.sqrt(sq + c**2) + c)


def huber_constant(dim: int) -> float:
  """c = 0.00054 sqrt(d) of improved CT (Song & Dhariwal 2024, Sec. 3.3), data in [-1, 1]."""
  return 0.00054 * math.sqrt(dim)


def squared_l2(a: Array, b: Array) -> Array:
  """||a - b||^2 per example, [B] (Song et al. 2023's l2 metric)."""
  return jnp.sum(jnp.reshape((a - b) ** 2, (a.shape[0], -1)), axis=1)


def interval_probs(boundaries: Array, *, lognormal: bool = True, p_mean: float = -1.1,
                   p_std: float = 2.0) -> Array:
  """p(n), n = 0 .. N - 2 over the ascending boundaries (zero for zero-width padding).

  lognormal: improved CT (Song & Dhariwal 2024, eq. 10), proportional to
  erf((log t_(n+1) - P_mean) / (sqrt 2 P_std)) - erf((log t_n - P_mean) / (sqrt 2 P_std)),
  the lognormal mass between consecutive levels; else uniform (Song et al. 2023).
  """
  if lognormal:
    cdf = jax.scipy.special.erf((jnp.log(boundaries) - p_mean) / (math.sqrt(2.0) * p_std))
    mass = cdf[1:] - cdf[:-1]
  else:
    mass = (boundaries[1:] > boundaries[:-1]).astype(boundaries.dtype)
  return mass / jnp.sum(mass)


def ict_weights(boundaries: Array) -> Array:
  """lambda(t_n) = 1 / (t_(n+1) - t_n) of improved CT (Song & Dhariwal 2024, Sec. 3.1); 0 for
  zero-width padding."""
  gap = boundaries[1:] - boundaries[:-1]
  return jnp.where(gap > 0, 1.0 / jnp.where(gap > 0, gap, 1.0), 0.0)


def denoise_on_sigma_axis(denoiser: Any, x: Array, sigma: Array) -> Array:
  """A teacher's x0 at noise level sigma = sigma_t / alpha_t of its own process: the point
  x = x_0 + sigma n of EDM's axis is alpha_t x of the teacher's, at t with log-SNR
  -2 log sigma (Kingma et al. 2021's invariance of the flow to the process). A level outside
  the teacher's range is read at its nearest end (`t_from_log_snr` clips: a discrete
  schedule's first timestep is noisier than EDM's sigma_min = 0.002)."""
  process = denoiser.process
  t = process.t_from_log_snr(-2.0 * jnp.log(sigma))
  alpha = process.marginal_coeffs(t)[0]
  return denoiser(broadcast_to_x(alpha, x).astype(x.dtype) * x, t).x0


def teacher_ode_step(denoiser: Any, x: Array, sigma_from: Array, sigma_to: Array, *,
                     solver: str = "heun") -> Array:
  """One step of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma from
  sigma_from to sigma_to (Karras et al. 2022, Algorithm 1; Euler = DDIM on this axis):
  the x_hat_{t_n} of consistency distillation (Song et al. 2023, eq. 6)."""
  if solver not in SOLVERS:
    raise ValueError(f"unknown ODE solver {solver!r}; expected one of {SOLVERS}")
  s_from, s_to = broadcast_to_x(sigma_from, x), broadcast_to_x(sigma_to, x)
  slope = (x - denoise_on_sigma_axis(denoiser, x, sigma_from)) / s_from
  euler = x + (s_to - s_from) * slope
  if solver == "euler":
    return euler
  slope_to = (euler - denoise_on_sigma_axis(denoiser, euler, sigma_to)) / s_to
  return x + (s_to - s_from) * 0.5 * (slope + slope_to)


def consistency_loss(student: ConsistencyFn, target: ConsistencyFn, x0: Array, rng: Array, *,
                     boundaries: Array, probs: Optional[Array] = None,
                     weights: Optional[Array] = None,
                     metric: Callable[[Array, Array], Array] = squared_l2,
                     teacher: Any = None, solver: str = "heun") -> Array:
  """The per-example consistency loss (module docstring; Song et al. 2023, eq. 7 and 10), [B].

  ``student`` and ``target`` are consistency functions f(x, sigma) (the target's output is
  not differentiated); ``boundaries`` the ascending t_1 .. t_N; ``probs`` p(n) (default
  uniform), ``weights`` lambda(t_n) (default 1); ``teacher`` a denoiser of any process for
  CD (its ODE step by ``solver``), None for CT.
  """
  key_n, key_z = jax.random.split(rng)
  num = boundaries.shape[0] - 1
  logits = jnp.zeros((num,)) if probs is None else jnp.log(probs)
  n = jax.random.categorical(key_n, logits, shape=(x0.shape[0],))
  z = jax.random.normal(key_z, x0.shape, x0.dtype)
  t_lo, t_hi = boundaries[n].astype(x0.dtype), boundaries[n + 1].astype(x0.dtype)
  x_hi = x0 + broadcast_to_x(t_hi, x0) * z
  if teacher is None:
    x_lo = x0 + broadcast_to_x(t_lo, x0) * z
  else:
    x_lo = teacher_ode_step(teacher, x_hi, t_hi, t_lo, solver=solver)
  goal = jax.lax.stop_gradient(target(x_lo, t_lo))
  weight = 1.0 if weights is None else weights[n].astype(x0.dtype)
  return weight * metric(student(x_hi, t_hi), goal)


def _consistency_output(model_fn: ModelFn, sigma_data: float, sigma_min: float, x: Array,
                        sigma: Array) -> Array:
  return consistency_function(model_fn, x, sigma, sigma_data=sigma_data, sigma_min=sigma_min)


def consistency_model_fn(model_fn: ModelFn, *, sigma_data: float,
                         sigma_min: float) -> jax.tree_util.Partial:
  """``f(x, sigma)`` of a network as a model of x0 on `EDMProcess`: with
  ``make_denoiser(..., prediction="x0")`` every sampler (the ``fewstep`` one above all) runs it."""
  return jax.tree_util.Partial(_consistency_output, model_fn, sigma_data, sigma_min)
