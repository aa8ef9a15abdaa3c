"""Forward SDEs of score-based generative modelling (Song et al. 2021, "Score-Based Generative
Modeling through Stochastic Differential Equations", ICLR; below "Song et al. 2021").

    dx = f(x, t) dt + g(t) dw,   t in [0, T], T = 1                          (eq. 5)

Each SDE is a `flax.struct.dataclass` (a pytree whose leaves are its hyperparameters) with
the methods of score_sde: `sde`, `marginal_prob`, `prior_sampling`, `prior_logp`,
`discretize` and `reverse`. The perturbation kernels are all of the form

    p_0t(x_t | x_0) = N(x_t; alpha_t x_0, sigma_t^2 I),

and `marginal_coeffs(t) -> (alpha_t, sigma_t)` exposes them, with the log signal-to-noise
ratio `log_snr(t) = log(alpha_t^2 / sigma_t^2)` and its closed-form inverse `t_from_log_snr`:
the interface of `jaxdiff.processes.GaussianProcess`, which every sampler runs on.

Discrete time. The N-step discretization indexes step i in [0, N) by the continuous time
t_i = (i + 1) / N (`continuous_to_discrete`): VP's discrete betas beta(i / (N - 1)) / N are then
exactly the linear DDPM schedule `make_schedule("linear", N)`, and sum_{j <= i} beta_j is a
Riemann sum of the integral of beta over [0, t_i], so 1 - alphas_cumprod[i] matches VP's
marginal variance at t_i.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.processes import (  # ReverseSDE, broadcast_to_x: part of this module's API
    GaussianProcess, ReverseSDE, ScoreFn, broadcast_to_x)

Array = jax.Array

T_END = 1.0
T_MIN = 1e-3  # the default end of sampling grids (score_sde's sampling_eps)


def _concrete_or_none(a: Any) -> np.ndarray | None:
  """The value of `a` as a NumPy array, or None when it is traced (checks then skip)."""
  try:
    return np.asarray(a)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def check_time(t: Array, *, eps: float = 0.0, name: str = "t") -> None:
  """Raises ValueError if `t` is not a [B] vector in [eps, 1] (values checked when concrete)."""
  if jnp.ndim(t) != 1:
    raise ValueError(f"{name} must have shape [B], got shape {jnp.shape(t)}")
  value = _concrete_or_none(t)
  if value is not None and value.size and (value.min() < eps or value.max() > T_END):
    raise ValueError(f"{name} must lie in [{eps}, {T_END}], got values in "
                     f"[{value.min()}, {value.max()}]")


def check_eps(eps: float) -> None:
  """Raises ValueError unless the smallest time eps lies in (0, 1)."""
  if not 0.0 < eps < T_END:
    raise ValueError(f"eps must lie in (0, 1), got {eps}")


def check_score_fn(score_fn: ScoreFn, x: Array, t: Array) -> None:
  """Raises ValueError (at trace time, by `jax.eval_shape`) unless score_fn(x, t) is shaped as x."""
  out = jax.eval_shape(score_fn, x, t)
  if out.shape != jnp.shape(x):
    raise ValueError(f"score_fn must return an array shaped like x {jnp.shape(x)}, "
                     f"got {out.shape}")


def _check_positive_n(n: Any) -> None:
  if not isinstance(n, int) or n < 1:
    raise ValueError(f"N (number of discretization steps) must be a positive int, got {n!r}")


def _check_increasing(low: Any, high: Any, names: str) -> None:
  """Validates 0 < low < high when both are Python / NumPy numbers; array or placeholder leaves
  (jit, vmap, tree_map unflattening) are not checked."""
  numbers = (int, float, np.integer, np.floating)
  if isinstance(low, numbers) and isinstance(high, numbers) and not 0.0 < low < high:
    raise ValueError(f"{names} must satisfy 0 < {names.replace(', ', ' < ')}, got {low}, {high}")


def continuous_to_discrete(t: Array, num_timesteps: int) -> Array:
  """Discrete timestep i = round(t N) - 1, clipped to [0, N), of continuous times t.

  The convention t_i = (i + 1) / N makes sum_{j <= i} beta_j of the discretized VP chain a
  Riemann sum of int_0^{t_i} beta(s) ds (Song et al. 2021, App. B), so alphas_cumprod[i] of the
  N-step DDPM chain matches VP's alpha_t^2 at t_i; t = 1 maps to N - 1.
  """
  index = jnp.round(t * num_timesteps).astype(jnp.int32) - 1
  return jnp.clip(index, 0, num_timesteps - 1)


def _t_from_log_alpha(log_alpha: Array, beta_min: Any, beta_max: Any) -> Array:
  """Root t >= 0 of (beta_max - beta_min) t^2 / 4 + beta_min t / 2 + log alpha = 0 (VP, sub-VP)."""
  db = beta_max - beta_min
  return (-beta_min + jnp.sqrt(beta_min**2 - 4.0 * db * log_alpha)) / db


class _SDEMethods(GaussianProcess):
  """Methods shared by the SDE pytrees; subclasses define sde, marginal_coeffs, log_snr,
  t_from_log_snr and prior_std."""

  T = T_END
  t_max = T_END
  t_min = T_MIN

  def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """Mean alpha_t x0 and std sigma_t ([B]) of p_0t(x_t | x0) (Song et al. 2021, eq. 29 / 33)."""
    check_time(t)
    return super().marginal_prob(x0, t)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Euler-Maruyama discretization x_{i+1} = x_i + f dt + g sqrt(dt) z, dt = 1 / N.

    Returns (f_i, G_i) = (f(x, t) / N, g(t) / sqrt(N)) (Song et al. 2021, eq. 45 with
    Euler-Maruyama, score_sde's default `SDE.discretize`).
    """
    drift, diffusion = self.sde(x, t)
    return drift / self.N, diffusion / np.sqrt(self.N)


@flax.struct.dataclass
class _LinearBetaSDE(_SDEMethods):
  """Fields and schedule shared by VP and sub-VP: beta(t) = beta_min + t (beta_max - beta_min)."""

  beta_min: Any = 0.1
  beta_max: Any = 20.0
  N: int = flax.struct.field(pytree_node=False, default=1000)

  prior_std = 1.0

  def __post_init__(self):
    _check_positive_n(self.N)
    _check_increasing(self.beta_min, self.beta_max, "beta_min, beta_max")

  def beta(self, t: Array) -> Array:
    """beta(t) = beta_min + t (beta_max - beta_min)."""
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_alpha(self, t: Array) -> Array:
    """log alpha_t = -int_0^t beta / 2 = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2
    (Song et al. 2021, eq. 29)."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min


@flax.struct.dataclass
class VPSDE(_LinearBetaSDE):
  """Variance-preserving SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (Song et al. 2021, eq. 11).

  beta(t) = beta_min + t (beta_max - beta_min); its N-step discretization is DDPM's chain
  with betas beta_i = beta(i / (N - 1)) / N (eq. 10), the linear schedule of Ho et al. 2020.
  """

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift f(x, t) = -beta(t) x / 2 and diffusion g(t) = sqrt(beta(t)) (eq. 11)."""
    check_time(t)
    beta = self.beta(t)
    return -0.5 * broadcast_to_x(beta, x) * x, jnp.sqrt(beta)

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """alpha_t = exp(log_alpha(t)), sigma_t = sqrt(1 - alpha_t^2) (eq. 29)."""
    log_alpha = self.log_alpha(t)
    return jnp.exp(log_alpha), jnp.sqrt(-jnp.expm1(2.0 * log_alpha))

  def log_snr(self, t: Array) -> Array:
    """lambda = 2 log alpha - log(1 - alpha^2), without cancellation near t = 0."""
    log_alpha = self.log_alpha(t)
    return 2.0 * log_alpha - jnp.log(-jnp.expm1(2.0 * log_alpha))

  def t_from_log_snr(self, lam: Array) -> Array:
    """Inverse of log_snr: alpha^2 = sigmoid(lambda), then the quadratic in t."""
    log_alpha = -0.5 * jnp.logaddexp(0.0, -lam)
    return _t_from_log_alpha(log_alpha, self.beta_min, self.beta_max)

  def discrete_betas(self, index: Array, dtype: Any = jnp.float32) -> Array:
    """beta_i = beta(i / (N - 1)) / N, DDPM's betas (Song et al. 2021, eq. 10; Ho et al. 2020)."""
    frac = index.astype(dtype) / max(self.N - 1, 1)
    return self.beta(frac) / self.N

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """DDPM's transition x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z as (f_i, G_i).

    f_i = (sqrt(1 - beta_i) - 1) x, G_i = sqrt(beta_i) with i = continuous_to_discrete(t, N)
    (Song et al. 2021, eq. 8 / App. B; Ho et al. 2020, eq. 2).
    """
    check_time(t)
    beta = self.discrete_betas(continuous_to_discrete(t, self.N), t.dtype)
    return broadcast_to_x(jnp.sqrt(1.0 - beta) - 1.0, x) * x, jnp.sqrt(beta)


@flax.struct.dataclass
class SubVPSDE(_LinearBetaSDE):
  """Sub-VP SDE dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw.

  Song et al. 2021, eq. 12; its marginal std is 1 - alpha_t^2 (eq. 33), below VP's.
  """

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift -beta(t) x / 2 and diffusion sqrt(beta(t) (1 - alpha_t^4)) (eq. 12)."""
    check_time(t)
    beta = self.beta(t)
    discount = -jnp.expm1(4.0 * self.log_alpha(t))
    return -0.5 * broadcast_to_x(beta, x) * x, jnp.sqrt(beta * discount)

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """alpha_t = exp(log_alpha(t)), sigma_t = 1 - alpha_t^2 (eq. 33)."""
    log_alpha = self.log_alpha(t)
    return jnp.exp(log_alpha), -jnp.expm1(2.0 * log_alpha)

  def log_snr(self, t: Array) -> Array:
    """lambda = 2 log alpha - 2 log(1 - alpha^2)."""
    log_alpha = self.log_alpha(t)
    return 2.0 * log_alpha - 2.0 * jnp.log(-jnp.expm1(2.0 * log_alpha))

  def t_from_log_snr(self, lam: Array) -> Array:
    """Inverse of log_snr: u = alpha^2 solves (1 - u)^2 = u e^{-lambda}; then t from log alpha."""
    c = jnp.exp(-lam)
    u = 2.0 / (2.0 + c + jnp.sqrt(c * (4.0 + c)))  # the root in (0, 1), written stably
    return _t_from_log_alpha(0.5 * jnp.log(u), self.beta_min, self.beta_max)


@flax.struct.dataclass
class VESDE(_SDEMethods):
  """Variance-exploding SDE dx = sqrt(d sigma(t)^2 / dt) dw, sigma(t) = s_min (s_max / s_min)^t.

  Song et al. 2021, eq. 9 / 30; its N-step discretization is SMLD's (NCSN's) geometric noise
  ladder x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (eq. 8).
  """

  sigma_min: Any = 0.01
  sigma_max: Any = 50.0
  N: int = flax.struct.field(pytree_node=False, default=1000)

  def __post_init__(self):
    _check_positive_n(self.N)
    _check_increasing(self.sigma_min, self.sigma_max, "sigma_min, sigma_max")

  @property
  def prior_std(self) -> Any:
    return self.sigma_max

  def sigma(self, t: Array) -> Array:
    """sigma(t) = sigma_min (sigma_max / sigma_min)^t."""
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift 0 and diffusion sigma(t) sqrt(2 log(sigma_max / sigma_min)) (eq. 30)."""
    check_time(t)
    log_ratio = jnp.log(self.sigma_max / self.sigma_min)
    return jnp.zeros_like(x), self.sigma(t) * jnp.sqrt(2.0 * log_ratio)

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """alpha_t = 1, sigma_t = sigma(t) (score_sde's convention: sigma(0) = sigma_min)."""
    return jnp.ones_like(t), self.sigma(t)

  def log_snr(self, t: Array) -> Array:
    """lambda = -2 log sigma(t)."""
    return -2.0 * jnp.log(self.sigma(t))

  def t_from_log_snr(self, lam: Array) -> Array:
    """Inverse of log_snr = -2 log sigma(t)."""
    return (-0.5 * lam - jnp.log(self.sigma_min)) / jnp.log(self.sigma_max / self.sigma_min)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """SMLD's transition: f_i = 0, G_i = sqrt(sigma_i^2 - sigma_{i-1}^2), sigma_{-1} = 0.

    sigma_i = geometric_sigmas(sigma_min, sigma_max, N)[i] with i = continuous_to_discrete(t, N)
    (Song et al. 2021, eq. 8 / App. B; Song & Ermon 2019).
    """
    check_time(t)
    index = continuous_to_discrete(t, self.N)
    sigmas = geometric_sigmas(self.sigma_min, self.sigma_max, self.N)
    prev = jnp.where(index == 0, 0.0, sigmas[jnp.maximum(index - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigmas[index] ** 2 - prev**2)


def geometric_sigmas(sigma_min: Any, sigma_max: Any, num_scales: int) -> Array:
  """sigma_i = sigma_min (sigma_max / sigma_min)^{i / (L - 1)}, i = 0..L-1, ascending.

  The geometric noise ladder of NCSN (Song & Ermon 2019, Sec. 4.2) and of VE's discretization.
  """
  if num_scales < 1:
    raise ValueError(f"num_scales must be a positive int, got {num_scales}")
  frac = jnp.linspace(0.0, 1.0, num_scales) if num_scales > 1 else jnp.zeros((1,))
  return sigma_min * (sigma_max / sigma_min) ** frac


_SDES = {"vpsde": VPSDE, "subvpsde": SubVPSDE, "vesde": VESDE}
SDES = (VPSDE, SubVPSDE, VESDE)


def get_sde(name: str, **kwargs: Any) -> VPSDE | SubVPSDE | VESDE:
  """Builds an SDE by name: "vpsde", "subvpsde" or "vesde" (case-insensitive)."""
  key = name.lower()
  if key not in _SDES:
    raise ValueError(f"unknown SDE {name!r}; valid names are {sorted(_SDES)}")
  return _SDES[key](**kwargs)


def score_from_eps(eps_model_fn: Callable[[Array, Array], Array], sde: Any, *,
                   schedule: Any = None) -> ScoreFn:
  """Score of an eps-prediction model: score(x, t) = -eps(x, t) / sigma_t (Song et al. 2021, eq. 28
  with Ho et al. 2020's eps-parameterization; x_t = alpha_t x0 + sigma_t eps).

  With schedule=None, `eps_model_fn(x, t)` takes the continuous times t in [eps, 1] and sigma_t is
  the SDE's. With a discrete `jaxdiff.schedules.Schedule` of T steps, `eps_model_fn(x, timesteps)`
  is a model trained on that chain (int32 timesteps in [0, T)): t maps to
  i = continuous_to_discrete(t, T) = round(t T) - 1, and sigma is the chain's
  sqrt(1 - alphas_cumprod[i]). For VPSDE(N=T) and make_schedule("linear", T) this is the
  discretization of the same process, so a DDPM model trained by train.py serves every
  sampler of `jaxdiff.sde_samplers`.
  """
  if schedule is None:
    def score_fn(x: Array, t: Array) -> Array:
      check_time(t)
      _, sigma = sde.marginal_coeffs(t)
      return -eps_model_fn(x, t) / broadcast_to_x(sigma, x)
  else:
    def score_fn(x: Array, t: Array) -> Array:
      check_time(t)
      index = continuous_to_discrete(t, schedule.num_timesteps)
      sigma = schedule.sqrt_one_minus_alphas_cumprod[index]
      return -eps_model_fn(x, index) / broadcast_to_x(sigma, x).astype(x.dtype)
  return score_fn
