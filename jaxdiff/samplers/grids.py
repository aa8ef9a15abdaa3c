"""Time grids of the samplers and the per-step coefficients read from a noise process.

A reverse chain visits decreasing process times t_0 > t_1 > ... (`jaxdiff.processes`),
optionally followed by the clean end (alpha = 1, sigma = 0, lambda = +inf). The grid kinds:

- "discrete": the evenly strided timesteps of a discrete `Schedule`, `space_timesteps(T,
  "ddimN")` (Song et al. 2021, Sec. 4.2; Nichol & Dhariwal 2021, Sec. 4), as int32;
- "time_uniform": uniform in t from t_max to t_min;
- "time_quadratic": uniform in sqrt(t) (Lu et al. 2022a, App. D.1);
- "logSNR": uniform in lambda (Lu et al. 2022a, Sec. 3.3);
- "nested": t_min + (t_max - t_min) i / N for i = N .. 1, then the clean end: the grid of N
  steps is every other point of the grid of 2N (progressive distillation's halving,
  Salimans & Ho 2022, Algorithm 2, with its u = i / N mapped onto the process's times);
- "karras": sigma-hat_i = (s_max^(1/rho) + i / (N - 1) (s_min^(1/rho) - s_max^(1/rho)))^rho
  with sigma-hat = sigma / alpha = exp(-lambda / 2) (Karras et al. 2022, eq. 5).

The last two need finite log-SNRs at both ends: on a process whose t_max has alpha = 0 or
whose t_min has sigma = 0 (`jaxdiff.processes.FlowProcess`) they span sigma-hat in
[0.002, 80] there, Karras et al.'s range.

Every grid is computed from the process with jnp, so it is traced with the process inside a
caller's jit. Explicit grids are checked when their values are concrete.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules

Array = Any

GRID_KINDS = ("discrete", "time_uniform", "time_quadratic", "logSNR", "karras", "nested")
TIME_KINDS = ("time_uniform", "time_quadratic")

# Karras et al. 2022's noise range (Sec. 5): where a process reaches sigma-hat = infinity
# (alpha = 0, a flow's t = 1) or 0 (its t = 0), the grids uniform in lambda or in
# sigma-hat^(1/rho) end at these levels instead.
KARRAS_SIGMA_MIN, KARRAS_SIGMA_MAX = 0.002, 80.0


@flax.struct.dataclass
class Points:
  """Process time t (the model's input), alpha, sigma and log-SNR at points of a grid."""

  t: Array
  alpha: Array
  sigma: Array
  log_snr: Array


def points(process: Any, times: Array, *, ends_clean: bool) -> Points:
  """The coefficients at ``times``, followed by the clean end when ``ends_clean`` (whose t is
  a copy of the last time: no model is evaluated there)."""
  alpha, sigma = process.marginal_coeffs(times)
  lam = process.log_snr(times)
  if not ends_clean:
    return Points(times, alpha, sigma, lam)
  append = lambda a, v: jnp.concatenate([a, jnp.full((1,), v, a.dtype)])
  return Points(jnp.concatenate([times, times[-1:]]), append(alpha, 1.0), append(sigma, 0.0),
                append(lam, jnp.inf))


def is_concrete(a: Any) -> bool:
  """Whether ``a`` has a value now (not a tracer of an enclosing transformation)."""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(a))


def check_num_steps(num_steps: Any, *, limit: Optional[int] = None, minimum: int = 1,
                    what: str = "num_steps") -> int:
  """Raises ValueError unless ``minimum <= num_steps`` (``<= limit`` when given)."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
    raise ValueError(f"{what} must be an int, got {num_steps!r}")
  if limit is None and num_steps < minimum:
    raise ValueError(f"{what}={num_steps} must be >= {minimum}")
  if limit is not None and not minimum <= num_steps <= limit:
    raise ValueError(f"{what}={num_steps} must lie in [{minimum}, {limit}] (the schedule has "
                     f"T = {limit} timesteps)")
  return int(num_steps)


def strided_timesteps(num_timesteps: int, *, num_steps: Optional[int],
                      timesteps: Optional[Sequence[int]] = None) -> np.ndarray:
  """The ascending original timesteps a discrete sampler visits (Song et al. 2021, Sec. 4.2).

  ``timesteps`` if given (strictly ascending ints in [0, T)); else all T for
  ``num_steps=None``; else the N evenly strided ones of ``space_timesteps(T, "ddimN")``.

  Raises:
    ValueError: on num_steps outside [1, T] or bad timesteps.
  """
  if timesteps is None:
    if num_steps is None:
      return np.arange(num_timesteps, dtype=np.int32)
    num_steps = check_num_steps(num_steps, limit=num_timesteps)
    return np.asarray(schedules.space_timesteps(num_timesteps, f"ddim{num_steps}"), np.int32)
  kept = np.asarray(timesteps)
  if kept.ndim != 1 or kept.size < 1 or not np.issubdtype(kept.dtype, np.integer):
    raise ValueError(f"timesteps must be a non-empty 1-D sequence of ints, got {timesteps!r}")
  if np.any(np.diff(kept) <= 0):
    raise ValueError(f"timesteps must be strictly ascending, got {kept.tolist()}")
  if kept[0] < 0 or kept[-1] >= num_timesteps:
    raise ValueError(f"timesteps must lie in [0, {num_timesteps}), got {kept.tolist()}")
  return kept.astype(np.int32)


def check_times(times: Any, process: Any) -> None:
  """Raises ValueError unless explicit process times are a strictly decreasing 1-D grid within
  the process's range (checked when concrete)."""
  if jnp.ndim(times) != 1 or jnp.shape(times)[0] < 1:
    raise ValueError(f"times must be a non-empty 1-D array, got shape {jnp.shape(times)}")
  if not is_concrete(times) or not is_concrete(process):
    return
  values = np.asarray(times, np.float64)
  if np.any(np.diff(values) >= 0):
    raise ValueError(f"times must be strictly decreasing (noisiest first), got "
                     f"{values.tolist()[:8]}{' ...' if values.size > 8 else ''}")
  low, high = float(process.t_min), float(process.t_max)
  if values[-1] < low * (1 - 1e-6) or values[0] > high * (1 + 1e-6):
    raise ValueError(f"times must lie in [{low}, {high}] (the process's time range), got "
                     f"[{values[-1]}, {values[0]}]")


def sigmas_to_times(process: Any, sigmas: Array) -> Array:
  """Process times of the noise levels sigma-hat = sigma / alpha (EDM's axis), lambda = -2 log."""
  return process.t_from_log_snr(-2.0 * jnp.log(jnp.asarray(sigmas)))


def karras_sigmas(sigma_min: Array | float, sigma_max: Array | float, num_steps: int, *,
                  rho: float | Array = 7.0) -> Array:
  """The N noise levels of Karras et al. 2022, eq. 5 (without the final 0), decreasing."""
  if num_steps < 2:
    raise ValueError(f"num_steps must be >= 2, got {num_steps}")
  if is_concrete(rho) and not float(rho) > 0:
    raise ValueError(f"rho must be positive, got {rho}")
  frac = jnp.linspace(0.0, 1.0, num_steps)
  inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return (inv_max + frac * (inv_min - inv_max)) ** rho


def continuous_times(process: Any, kind: str, num_points: int, *, t_min: Any,
                     rho: float | Array = 7.0) -> Array:
  """``num_points`` decreasing times from t_max to ``t_min`` spaced as ``kind`` says."""
  dtype = jnp.result_type(float)
  t_max = jnp.asarray(process.t_max, dtype)
  t_min = jnp.asarray(t_min, dtype)
  if kind == "time_uniform":
    return jnp.linspace(t_max, t_min, num_points)
  if kind == "time_quadratic":
    return jnp.linspace(jnp.sqrt(t_max), jnp.sqrt(t_min), num_points) ** 2
  if kind == "nested":
    return t_min + (t_max - t_min) * jnp.arange(num_points, 0, -1, dtype=dtype) / num_points
  lam = process.log_snr(jnp.stack([t_max, t_min]))
  finite = jnp.isfinite(lam)
  karras_range = -2.0 * jnp.log(jnp.asarray([KARRAS_SIGMA_MAX, KARRAS_SIGMA_MIN], dtype))
  lam = jnp.where(finite, lam, karras_range)
  if kind == "logSNR":
    times = process.t_from_log_snr(jnp.linspace(lam[0], lam[1], num_points))
  else:
    sigmas = karras_sigmas(jnp.exp(-0.5 * lam[1]), jnp.exp(-0.5 * lam[0]), num_points, rho=rho)
    times = sigmas_to_times(process, sigmas)
  times = times.at[0].set(jnp.where(finite[0], t_max, times[0]))
  return times.at[-1].set(jnp.where(finite[1], t_min, times[-1]))


def check_kind(kind: str) -> None:
  """Raises ValueError for an unknown grid kind."""
  if kind not in GRID_KINDS:
    raise ValueError(f"unknown time grid {kind!r}; valid names are {list(GRID_KINDS)}")


def default_times(process: Any, kind: str, num_points: int, *, t_min: Any = None,
                  rho: float | Array = 7.0) -> Array:
  """The grid of ``kind`` with ``num_points`` points: "discrete" needs a `Schedule`."""
  check_kind(kind)
  if kind == "discrete":
    if not isinstance(process, schedules.Schedule):
      raise ValueError(f"time grid 'discrete' needs a discrete Schedule, not a "
                       f"{type(process).__name__}; use 'time_uniform' or 'logSNR'")
    kept = strided_timesteps(process.num_timesteps, num_steps=num_points)
    return jnp.asarray(kept[::-1].copy())
  return continuous_times(process, kind, num_points,
                          t_min=process.t_min if t_min is None else t_min, rho=rho)
