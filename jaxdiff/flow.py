"""Conditional flow matching (Lipman et al. 2023; Liu et al. 2023) and its timestep sampling
(Esser et al. 2024, "Scaling rectified flow transformers", Sec. 3.1 and 5.3.2).

On an interpolant x_t = alpha(t) x_0 + sigma(t) eps (`jaxdiff.processes.FlowProcess`, or any
process of `jaxdiff.processes`) the conditional velocity is

    u_t(x_t | x_0, eps) = alpha'(t) x_0 + sigma'(t) eps            (= eps - x_0 for the linear one)

and the conditional flow-matching loss E_{t, x_0, eps} ||v_theta(x_t, t) - u_t||^2 (Lipman et
al. 2023, eq. 9 and 23) has the same gradient as regressing onto the marginal velocity
E[u_t | x_t], whose ODE dx/dt = E[u_t | x_t] carries the noise to the data (the samplers of
`jaxdiff.samplers` with ``prediction="velocity"``). The training times are drawn as

- "uniform": t ~ U(0, 1);
- "logit_normal": t = sigmoid(m + s n), n ~ N(0, 1) (Esser et al. 2024, eq. 19);
- "mode": t = 1 - u - s_mode (cos^2(pi u / 2) - 1 + u), u ~ U(0, 1) (eq. 20);

then shifted, t -> shift t / (1 + (shift - 1) t) (eq. 23), which keeps the noise level of an
image with `resolution_shift(n) = sqrt(n / n_base)` times more pixels equal to the base one
(Sec. 5.3.2), and mapped onto the process's [t_min, t_max].
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.processes import FlowProcess, broadcast_to_x

Array = Any
ModelFn = Callable[[Array, Array], Array]

TIME_DISTRIBUTIONS = ("uniform", "logit_normal", "mode")


def check_time_options(distribution: str, *, scale: float = 1.0, mode_scale: float = 1.29,
                       shift: float = 1.0) -> None:
  """Raises ValueError (one line) for an unknown distribution or an out-of-range parameter."""
  if distribution not in TIME_DISTRIBUTIONS:
    raise ValueError(f"unknown timestep distribution {distribution!r}; expected one of "
                     f"{TIME_DISTRIBUTIONS}")
  if not float(scale) > 0:
    raise ValueError(f"the logit-normal scale must be positive, got {scale}")
  if not -1.0 <= float(mode_scale) <= 2.0 / (np.pi - 2.0):
    raise ValueError(f"mode_scale must lie in [-1, 2 / (pi - 2)] = [-1, 1.752] (where the "
                     f"map is monotone; Esser et al. 2024, eq. 20), got {mode_scale}")
  if not float(shift) > 0:
    raise ValueError(f"shift must be positive, got {shift}")


def shift_time(t: Array, shift: Array | float) -> Array:
  """t -> shift t / (1 + (shift - 1) t) (Esser et al. 2024, eq. 23): more noise for shift > 1."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_pixels: int, base_pixels: int = 256 * 256) -> float:
  """sqrt(num_pixels / base_pixels), the shift of Esser et al. 2024, Sec. 5.3.2, for images of
  ``num_pixels`` pixels trained after a base resolution of ``base_pixels``."""
  if num_pixels < 1 or base_pixels < 1:
    raise ValueError(f"pixel counts must be positive, got {num_pixels}, {base_pixels}")
  return float(np.sqrt(num_pixels / base_pixels))


def sample_time(rng: Array, shape: tuple[int, ...], *, distribution: str = "uniform",
                loc: float = 0.0, scale: float = 1.0, mode_scale: float = 1.29,
                shift: float = 1.0) -> Array:
  """Training times in [0, 1] drawn from ``distribution`` (module docstring), then shifted.

  Raises:
    ValueError: on an unknown distribution or a bad parameter (`check_time_options`).
  """
  check_time_options(distribution, scale=scale, mode_scale=mode_scale, shift=shift)
  if distribution == "logit_normal":
    t = jax.nn.sigmoid(loc + scale * jax.random.normal(rng, shape))
  else:
    t = jax.random.uniform(rng, shape)
    if distribution == "mode":
      t = 1.0 - t - mode_scale * (jnp.cos(0.5 * jnp.pi * t) ** 2 - 1.0 + t)
  return shift_time(t, shift)


def velocity_target(process: Any, x0: Array, eps: Array, t: Array) -> Array:
  """u_t = alpha'(t) x_0 + sigma'(t) eps, the conditional velocity (module docstring)."""
  dalpha, dsigma = (broadcast_to_x(c, x0).astype(x0.dtype) for c in process.coeff_derivatives(t))
  return dalpha * x0 + dsigma * eps


def flow_matching_loss(model_fn: ModelFn, x0: Array, rng: Array, *,
                       process: Any = None, distribution: str = "uniform", loc: float = 0.0,
                       scale: float = 1.0, mode_scale: float = 1.29,
                       shift: float = 1.0) -> Array:
  """Per-example conditional flow-matching loss ||v(x_t, t) - u_t||^2, the mean over pixels,
  [B], for a velocity model ``model_fn(x_t, t)`` on ``process`` (default: the linear
  `FlowProcess`), t drawn by `sample_time` and mapped onto [t_min, t_max]."""
  process = FlowProcess() if process is None else process
  time_rng, noise_rng = jax.random.split(rng)
  u = sample_time(time_rng, x0.shape[:1], distribution=distribution, loc=loc, scale=scale,
                  mode_scale=mode_scale, shift=shift)
  t = (process.t_min + (process.t_max - process.t_min) * u).astype(x0.dtype)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  alpha, sigma = (broadcast_to_x(c, x0).astype(x0.dtype) for c in process.marginal_coeffs(t))
  error = (model_fn(alpha * x0 + sigma * eps, t) - velocity_target(process, x0, eps, t)) ** 2
  return jnp.mean(jnp.reshape(error, (x0.shape[0], -1)), axis=1)
