"""Noise schedules of the discrete-time Gaussian diffusion and their respacing.

A :class:`Schedule` holds every per-timestep coefficient that the forward process
q(x_t | x_0), its posterior q(x_{t-1} | x_t, x_0) and the samplers need. The
coefficients are computed once in float64 with NumPy (Ho et al. 2020, eqs. 4, 6 and 7)
and stored in the requested dtype, float32 by default.

Timesteps are 0-indexed: index ``t`` in ``[0, T)`` is the seeds' step ``t + 1``.

A schedule is also a noise process in continuous time (`jaxdiff.processes`): at a
fractional timestep t in [0, T - 1] its log alpha-bar is interpolated linearly between the
integer timesteps, as Lu et al. 2022 (DPM-Solver, App. D.1) do for discrete-time models, so
that every ODE and SDE sampler runs on a model trained on the discrete chain (which is then
called with fractional timesteps). At integer timesteps every coefficient is the stored one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.processes import GaussianProcess

Array = Any

SCHEDULE_KINDS = ("linear", "cosine", "quadratic", "sigmoid")


@flax.struct.dataclass
class Schedule(GaussianProcess):
  """Per-timestep coefficients of a discrete Gaussian diffusion, arrays of shape [T].

  Build with :meth:`Schedule.from_betas` or :func:`make_schedule`. The instance is a
  pytree whose leaves are the arrays; ``num_timesteps`` is static, so a schedule can be
  passed straight into a jitted function. As a noise process its time is the timestep,
  integer or fractional, in [0, T - 1] (see the module docstring).
  """

  betas: Array
  alphas: Array
  alphas_cumprod: Array
  alphas_cumprod_prev: Array
  alphas_cumprod_next: Array
  sqrt_alphas_cumprod: Array
  sqrt_one_minus_alphas_cumprod: Array
  log_one_minus_alphas_cumprod: Array
  sqrt_recip_alphas_cumprod: Array
  sqrt_recipm1_alphas_cumprod: Array
  posterior_variance: Array
  posterior_log_variance_clipped: Array
  posterior_mean_coef1: Array
  posterior_mean_coef2: Array
  num_timesteps: int = flax.struct.field(pytree_node=False)

  @classmethod
  def from_betas(cls, betas: Array, dtype: Any = jnp.float32) -> "Schedule":
    """Derives every coefficient from the variances ``betas`` of q(x_t | x_{t-1}).

    Ho et al. 2020: alphas_cumprod is alpha-bar (eq. 4), the posterior
    q(x_{t-1} | x_t, x_0) has mean coefficients and variance beta-tilde of eqs. 6-7.
    The posterior variance at t = 0 is 0, so its log is "clipped" by repeating the value
    at t = 1 (the convention of Ho et al.'s code); for a one-step chain, which has no
    t = 1, the forward variance beta_0 is used instead.

    Args:
      betas: 1-D array of T values in (0, 1).
      dtype: dtype of the stored arrays (float64 needs ``jax_enable_x64``).

    Raises:
      ValueError: if betas is not 1-D and non-empty, or has a value outside (0, 1).
    """
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.shape[0] < 1:
      raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    bad = ~((betas > 0.0) & (betas < 1.0))
    if bad.any():
      index = int(np.argmax(bad))
      raise ValueError(
          f"betas must lie in the open interval (0, 1); betas[{index}] = {float(betas[index])!r}")
    num_timesteps = betas.shape[0]
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    first_nonzero = posterior_variance[1] if num_timesteps > 1 else betas[0]
    posterior_log_variance_clipped = np.log(np.append(first_nonzero, posterior_variance[1:]))
    arrays = dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        alphas_cumprod_next=alphas_cumprod_next,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=posterior_log_variance_clipped,
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )
    return cls(**{k: jnp.asarray(v, dtype=dtype) for k, v in arrays.items()},
               num_timesteps=num_timesteps)

  prior_std = 1.0
  t_min = 0

  @property
  def t_max(self) -> int:
    return self.num_timesteps - 1

  @property
  def N(self) -> int:  # pylint: disable=invalid-name  (score_sde's name for the chain length)
    return self.num_timesteps

  def _log_alpha_bar(self, t: Array) -> Array:
    """log alpha-bar at fractional timesteps: linear between the integers, clipped to [0, T-1]."""
    dtype = self.alphas_cumprod.dtype
    grid = jnp.arange(self.num_timesteps, dtype=dtype)
    return jnp.interp(jnp.asarray(t, dtype), grid, jnp.log(self.alphas_cumprod))

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """(sqrt(alpha-bar_t), sqrt(1 - alpha-bar_t)): stored at integer t, interpolated otherwise."""
    if _is_integer(t):
      return self.sqrt_alphas_cumprod[t], self.sqrt_one_minus_alphas_cumprod[t]
    log_alpha_bar = self._log_alpha_bar(t)
    return jnp.exp(0.5 * log_alpha_bar), jnp.sqrt(-jnp.expm1(log_alpha_bar))

  def log_snr(self, t: Array) -> Array:
    """lambda_t = log(alpha-bar_t / (1 - alpha-bar_t)) (Kingma et al. 2021, eq. 3)."""
    if _is_integer(t):
      return jnp.log(self.alphas_cumprod[t]) - self.log_one_minus_alphas_cumprod[t]
    log_alpha_bar = self._log_alpha_bar(t)
    return log_alpha_bar - jnp.log(-jnp.expm1(log_alpha_bar))

  def t_from_log_snr(self, lam: Array) -> Array:
    """The fractional timestep with log-SNR lambda: log alpha-bar = log sigmoid(lambda), then
    the inverse of the interpolation (clipped to [0, T - 1])."""
    dtype = self.alphas_cumprod.dtype
    log_alpha_bar = jax.nn.log_sigmoid(jnp.asarray(lam, dtype))
    grid = jnp.arange(self.num_timesteps, dtype=dtype)
    return jnp.interp(-log_alpha_bar, -jnp.log(self.alphas_cumprod), grid)

  def transition_variances(self, times: Array) -> Array:
    """sigma^2_{s|t} = 1 - alpha-bar_s / alpha-bar_t between consecutive times of a decreasing
    grid. For integer timesteps it is computed as 1 - exp(sum of log(1 - beta_j) over
    t < j <= s), exact to the stored betas (for s = t + 1 it is beta_s)."""
    if not _is_integer(times):
      return super().transition_variances(times)
    ascending = times[::-1]
    steps = jnp.arange(self.num_timesteps)
    position = jnp.searchsorted(ascending, steps, side="left")
    segment = times.shape[0] - 1 - position  # step k spans (times[k + 1], times[k]]
    inside = (position >= 1) & (position < times.shape[0])
    segment = jnp.where(inside, segment, times.shape[0] - 1)
    log_ratio = jax.ops.segment_sum(jnp.log1p(-self.betas), segment,
                                    num_segments=times.shape[0])[:-1]
    return -jnp.expm1(log_ratio)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """The chain's own step into timestep t (rounded): x_t = sqrt(1 - beta_t) x_{t-1} +
    sqrt(beta_t) z as (f, G) = ((sqrt(1 - beta_t) - 1) x, sqrt(beta_t)) (Ho et al. 2020, eq. 2;
    the form of Song et al. 2021, eq. 45)."""
    index = jnp.clip(jnp.round(t).astype(jnp.int32), 0, self.num_timesteps - 1)
    beta = self.betas[index]
    return (jnp.reshape(jnp.sqrt(1.0 - beta) - 1.0, beta.shape + (1,) * (x.ndim - 1)) * x,
            jnp.sqrt(beta))


def _is_integer(t: Array) -> bool:
  """Whether timesteps are integers (gathered) rather than fractional (interpolated)."""
  return jnp.issubdtype(jnp.result_type(t), jnp.integer)


def _linear_betas(num_timesteps: int, *, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> np.ndarray:
  """Ho et al. 2020 (Sec. 4): betas linear in t; endpoints scaled by 1000 / T."""
  scale = 1000.0 / num_timesteps
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def _cosine_betas(num_timesteps: int, *, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal 2021, eq. 17: alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2).

  beta_t = 1 - alpha-bar(t+1) / alpha-bar(t), clipped at ``max_beta`` (their Sec. 3.2).
  """
  def alpha_bar(u: np.ndarray) -> np.ndarray:
    return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

  steps = np.arange(num_timesteps, dtype=np.float64)
  betas = 1.0 - alpha_bar((steps + 1) / num_timesteps) / alpha_bar(steps / num_timesteps)
  return np.minimum(betas, max_beta)


def _quadratic_betas(num_timesteps: int, *, beta_start: float = 1e-4,
                     beta_end: float = 0.02) -> np.ndarray:
  """Ho et al.'s code: betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2."""
  return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_timesteps, dtype=np.float64) ** 2


def _sigmoid_betas(num_timesteps: int, *, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> np.ndarray:
  """betas = beta_start + (beta_end - beta_start) * sigmoid(linspace(-6, 6, T))."""
  u = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
  return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-u))


_BETA_FNS = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
    "quadratic": _quadratic_betas,
    "sigmoid": _sigmoid_betas,
}


def make_schedule(kind: str, num_timesteps: int, dtype: Any = jnp.float32, **kw: float) -> Schedule:
  """Builds a named noise schedule of ``num_timesteps`` steps.

  Args:
    kind: "linear" (Ho et al. 2020), "cosine" (Nichol & Dhariwal 2021, eq. 17),
      "quadratic" or "sigmoid".
    num_timesteps: T >= 1.
    dtype: dtype of the stored arrays.
    **kw: the kind's parameters: ``beta_start``/``beta_end`` (linear, quadratic,
      sigmoid), ``s``/``max_beta`` (cosine).

  Raises:
    ValueError: on an unknown kind, T < 1, or a parameter the kind does not take.
  """
  if kind not in _BETA_FNS:
    raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULE_KINDS}")
  if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)):
    raise ValueError(f"num_timesteps must be an int >= 1, got {num_timesteps!r}")
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  try:
    betas = _BETA_FNS[kind](int(num_timesteps), **kw)
  except TypeError as e:
    raise ValueError(f"bad parameters {sorted(kw)} for schedule {kind!r}: {e}") from None
  return Schedule.from_betas(betas, dtype=dtype)


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
  """Chooses which of the T original timesteps a shortened chain keeps.

  Nichol & Dhariwal 2021, Sec. 4: the chain is split into ``len(section_counts)``
  sections of (nearly) equal length and ``section_counts[i]`` evenly spaced steps are kept
  in section i. ``"ddimN"`` keeps ``range(0, T, stride)`` for the stride that yields
  exactly N steps, as in Song et al. 2021 (DDIM). A comma-separated string of counts is
  accepted too.

  Returns:
    The kept timesteps, sorted ascending.

  Raises:
    ValueError: if the request cannot be met (e.g. more steps than the chain has).
  """
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = int(section_counts[len("ddim"):])
      if desired < 1 or desired > num_timesteps:
        raise ValueError(f"cannot keep {desired} steps of a {num_timesteps}-step chain; "
                         f"expected 1 <= N <= {num_timesteps}")
      for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f"no integer stride gives exactly {desired} steps of {num_timesteps}; "
                       "pass explicit timesteps or section counts instead")
    section_counts = [int(x) for x in section_counts.split(",")]
  section_counts = list(section_counts)
  if not section_counts:
    raise ValueError("section_counts must not be empty")
  size_per, extra = divmod(num_timesteps, len(section_counts))
  kept: list[int] = []
  start = 0
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if count < 1 or count > size:
      raise ValueError(f"section {i} has {size} steps; cannot keep {count} of them")
    stride = (size - 1) / (count - 1) if count > 1 else 1.0
    kept.extend(start + round(stride * j) for j in range(count))
    start += size
  return sorted(set(kept))


def respace(schedule: Schedule, use_timesteps: Sequence[int]) -> tuple[Schedule, Array]:
  """A shorter chain over the kept timesteps with the same marginals q(x_t | x_0).

  Nichol & Dhariwal 2021, Sec. 4: for kept steps s_0 < s_1 < ..., the new betas are
  beta_i = 1 - alphas_cumprod[s_i] / alphas_cumprod[s_{i-1}] (with alphas_cumprod of
  the step before s_0 taken as 1), so the new alphas_cumprod equals the old one at the
  kept steps. Computed in float64 from the stored betas.

  Returns:
    ``(new_schedule, timestep_map)``: ``timestep_map[i]`` (int32) is the original
    timestep of new step i.

  Raises:
    ValueError: if a timestep is outside [0, T) or repeated, or none is given.
  """
  kept = sorted(int(t) for t in use_timesteps)
  if not kept:
    raise ValueError("use_timesteps must keep at least one timestep")
  if len(set(kept)) != len(kept):
    raise ValueError(f"use_timesteps has repeated timesteps: {kept}")
  if kept[0] < 0 or kept[-1] >= schedule.num_timesteps:
    raise ValueError(f"use_timesteps must lie in [0, {schedule.num_timesteps}), "
                     f"got {kept[0]}..{kept[-1]}")
  betas = np.asarray(schedule.betas, dtype=np.float64)
  alphas_cumprod = np.cumprod(1.0 - betas)[kept]
  new_betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
  new_schedule = Schedule.from_betas(new_betas, dtype=schedule.betas.dtype)
  return new_schedule, jnp.asarray(kept, dtype=jnp.int32)
