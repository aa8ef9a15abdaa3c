"""Gaussian noise processes x_t = alpha(t) x_0 + sigma(t) eps on one log-SNR axis.

Every process of jaxdiff (the discrete `jaxdiff.schedules.Schedule`, the SDEs of
`jaxdiff.sde`, EDM's sigma parameterization below) has a perturbation kernel

    q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)

on its own time variable t (integer or fractional timesteps of a schedule, t in [eps, 1] of
an SDE, the noise level sigma itself for EDM). Samplers see a process only through
`marginal_coeffs(t) = (alpha, sigma)`, the log signal-to-noise ratio

    lambda(t) = log_snr(t) = log(alpha(t)^2 / sigma(t)^2)          (Kingma et al. 2021, eq. 3)

and its inverse `t_from_log_snr`, so that one sampler serves every process (the idea of
Kingma et al.'s gamma(t) = -lambda(t) and of Lu et al. 2022's DPM-Solver, whose lambda is
half of ours). `GaussianProcess` below derives the rest: the Markov transition between two
times (Kingma et al. 2021, eq. 8-9), the forward SDE dx = f(t) x dt + g(t) dw with
f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, App. A;
Song et al. 2021, eq. 5), the Gaussian prior, and the reverse-time SDE and probability-flow
ODE (Song et al. 2021, eq. 6 and 13), and the time derivatives (alpha'(t), sigma'(t)) in which
the probability-flow ODE is dx/dt = alpha' E[x_0 | x_t] + sigma' E[eps | x_t], finite even
where alpha = 0 (the flow's noise end).

`FlowProcess` is the interpolant of flow matching and rectified flow (Lipman et al. 2023; Liu
et al. 2023): x_t = (1 - t) x_0 + t eps on t in [0, 1], or the trigonometric interpolant
cos(pi t / 2) x_0 + sin(pi t / 2) eps (Albergo & Vanden-Eijnden 2023).

A grid of times ends either at a time of the process or "clean" (alpha = 1, sigma = 0,
lambda = +inf): the clean end of a reverse chain returns the data prediction.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any
ScoreFn = Callable[[Array, Array], Array]


def broadcast_to_x(c: Array, x: Array) -> Array:
  """Reshapes per-example coefficients of shape [B] to broadcast against x [B, ...]."""
  return jnp.reshape(c, jnp.shape(c) + (1,) * (jnp.ndim(x) - jnp.ndim(c)))


def gaussian_logp(z: Array, std: Array | float) -> Array:
  """log N(z; 0, std^2 I) summed over all but the batch axis, shape [B]."""
  d = np.prod(z.shape[1:])
  sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
  return -0.5 * d * jnp.log(2.0 * jnp.pi * std**2) - 0.5 * sq / std**2


class GaussianProcess:
  """What every noise process shares; subclasses define `marginal_coeffs`, `t_from_log_snr`,
  `t_min`, `t_max` and `prior_std` (and may override `log_snr` with a more stable form)."""

  def alpha(self, t: Array) -> Array:
    """alpha(t), the signal scale of q(x_t | x_0)."""
    return self.marginal_coeffs(t)[0]

  def sigma(self, t: Array) -> Array:
    """sigma(t), the noise scale of q(x_t | x_0)."""
    return self.marginal_coeffs(t)[1]

  def log_snr(self, t: Array) -> Array:
    """lambda(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021, eq. 3)."""
    alpha, sigma = self.marginal_coeffs(t)
    return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

  def coeff_derivatives(self, t: Array) -> tuple[Array, Array]:
    """(alpha'(t), sigma'(t)), the time derivatives of the kernel's coefficients, by
    forward-mode differentiation (integer timesteps are read as fractional ones)."""
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(self.marginal_coeffs, (t,), (jnp.ones_like(t),))[1]

  def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """Mean alpha_t x0 and std sigma_t ([B]) of q(x_t | x_0)."""
    alpha, sigma = self.marginal_coeffs(t)
    return broadcast_to_x(alpha, x0) * x0, sigma

  def transition_variances(self, times: Array) -> Array:
    """sigma^2_{s|t} of q(x_s | x_t) = N(alpha_s / alpha_t x_t, sigma^2_{s|t} I) for each pair
    (s, t) = (times[k], times[k + 1]) of a decreasing grid, [len(times) - 1].

    sigma^2_{s|t} = sigma_s^2 - (alpha_s / alpha_t)^2 sigma_t^2
                  = sigma_s^2 (1 - exp(lambda_s - lambda_t))   (Kingma et al. 2021, eq. 8-9),
    the second form free of cancellation for nearby times.
    """
    lam = self.log_snr(times)
    return self.sigma(times[:-1]) ** 2 * -jnp.expm1(lam[:-1] - lam[1:])

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift f(t) x and diffusion g(t) of the forward SDE with this process's marginals:
    f = d log alpha / dt, g^2 = d sigma^2 / dt - 2 f sigma^2 (Kingma et al. 2021, App. A),
    by forward-mode differentiation in t."""
    t = jnp.asarray(t, jnp.result_type(float))

    def log_alpha_and_variance(u: Array) -> tuple[Array, Array]:
      alpha, sigma = self.marginal_coeffs(u)
      return jnp.log(alpha), sigma**2

    (_, variance), (f, dvariance) = jax.jvp(log_alpha_and_variance, (t,), (jnp.ones_like(t),))
    g2 = jnp.maximum(dvariance - 2.0 * f * variance, 0.0)
    return broadcast_to_x(f, x) * x, jnp.sqrt(g2)

  def prior_sampling(self, rng: Array, shape: tuple[int, ...]) -> Array:
    """x_T ~ N(0, prior_std^2 I), the tractable prior p_T."""
    return self.prior_std * jax.random.normal(rng, shape)

  def prior_logp(self, z: Array) -> Array:
    """log p_T(z) of the Gaussian prior, shape [B]."""
    return gaussian_logp(z, self.prior_std)

  def reverse(self, score_fn: ScoreFn, *, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (Song et al. 2021, eq. 6) or the probability-flow ODE (eq. 13)."""
    return ReverseSDE(forward=self, score_fn=score_fn, probability_flow=probability_flow)


@flax.struct.dataclass
class ReverseSDE:
  """Reverse-time SDE dx = [f - g^2 score] dt + g dw_bar (Song et al. 2021, eq. 6), or with
  probability_flow=True the ODE dx = [f - g^2 score / 2] dt (eq. 13). Time runs backwards.
  """

  forward: Any
  score_fn: ScoreFn = flax.struct.field(pytree_node=False)
  probability_flow: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def N(self) -> int:  # pylint: disable=invalid-name  (score_sde's name)
    return self.forward.N

  def _score_weight(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Reverse drift f - c g^2 score (c = 1, or 1/2 for the ODE) and diffusion g (0 for the ODE)."""
    drift, diffusion = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = drift - self._score_weight() * broadcast_to_x(diffusion**2, x) * score
    return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Reverse discretization f_i - c G_i^2 score, G_i (Song et al. 2021, eq. 46-47)."""
    f, g = self.forward.discretize(x, t)
    f = f - self._score_weight() * broadcast_to_x(g**2, x) * self.score_fn(x, t)
    return f, jnp.zeros_like(g) if self.probability_flow else g


def _check_sigma_range(sigma_min: Any, sigma_max: Any) -> None:
  numbers = (int, float, np.integer, np.floating)
  if isinstance(sigma_min, numbers) and isinstance(sigma_max, numbers) \
      and not 0.0 < sigma_min <= sigma_max:
    raise ValueError(f"sigma_min, sigma_max must satisfy 0 < sigma_min <= sigma_max, got "
                     f"{sigma_min}, {sigma_max}")


@flax.struct.dataclass
class EDMProcess(GaussianProcess):
  """The variance-exploding process on EDM's time axis: x = x_0 + sigma n with t = sigma.

  Karras et al. 2022, Table 1 ("ours"): sigma(t) = t, s(t) = 1, so the time variable is the
  noise level itself, in [sigma_min, sigma_max]; the prior is N(0, sigma_max^2 I). NCSN's
  noise-conditional score models (Song & Ermon 2019) live on the same axis.
  """

  sigma_min: Any = 0.002
  sigma_max: Any = 80.0

  def __post_init__(self):
    _check_sigma_range(self.sigma_min, self.sigma_max)

  @property
  def t_min(self) -> Any:
    return self.sigma_min

  @property
  def t_max(self) -> Any:
    return self.sigma_max

  @property
  def prior_std(self) -> Any:
    return self.sigma_max

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """alpha = 1, sigma = t."""
    t = jnp.asarray(t)
    return jnp.ones_like(t), t

  def log_snr(self, t: Array) -> Array:
    """lambda = -2 log sigma."""
    return -2.0 * jnp.log(t)

  def t_from_log_snr(self, lam: Array) -> Array:
    """sigma = exp(-lambda / 2)."""
    return jnp.exp(-0.5 * lam)


INTERPOLANTS = ("linear", "cosine")


@flax.struct.dataclass
class FlowProcess(GaussianProcess):
  """The interpolant x_t = alpha(t) x_0 + sigma(t) eps of flow matching, t in [t_min, t_max].

  "linear": alpha = 1 - t, sigma = t, the conditional optimal-transport path of Lipman et
  al. 2023 (their sigma_min = 0) and the rectified flow of Liu et al. 2023, with t = 0 the
  data and t = 1 the noise (Esser et al. 2024's convention); its velocity is eps - x_0.
  "cosine": alpha = cos(pi t / 2), sigma = sin(pi t / 2), the trigonometric interpolant of
  Albergo & Vanden-Eijnden 2023 (variance-preserving). The prior is N(0, sigma(t_max)^2 I),
  exact at the default t_max = 1 where alpha = 0. The range is static (part of a compiled
  sampler's key); the default grid of every sampler but EDM's Heun is uniform in t.
  """

  interpolant: str = flax.struct.field(pytree_node=False, default="linear")
  t_min: float = flax.struct.field(pytree_node=False, default=0.0)
  t_max: float = flax.struct.field(pytree_node=False, default=1.0)

  default_grid = "time_uniform"

  def __post_init__(self):
    if self.interpolant not in INTERPOLANTS:
      raise ValueError(f"unknown interpolant {self.interpolant!r}; expected one of "
                       f"{INTERPOLANTS}")
    if not 0.0 <= float(self.t_min) < float(self.t_max) <= 1.0:
      raise ValueError(f"t_min, t_max must satisfy 0 <= t_min < t_max <= 1, got {self.t_min}, "
                       f"{self.t_max}")

  @property
  def prior_std(self) -> float:
    if self.interpolant == "linear":
      return float(self.t_max)
    return float(np.sin(0.5 * np.pi * self.t_max))

  @property
  def clean_t_min(self) -> bool:
    """Whether the grid's end t_min is itself the data (sigma = 0): samplers that end with a
    step to the clean end then stop one grid point before it."""
    return float(self.t_min) == 0.0

  def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
    """(1 - t, t), or (cos(pi t / 2), sin(pi t / 2))."""
    t = jnp.asarray(t, jnp.result_type(float))
    if self.interpolant == "linear":
      return 1.0 - t, t
    return jnp.cos(0.5 * jnp.pi * t), jnp.sin(0.5 * jnp.pi * t)

  def coeff_derivatives(self, t: Array) -> tuple[Array, Array]:
    """(-1, 1), or (pi / 2) (-sin(pi t / 2), cos(pi t / 2))."""
    t = jnp.asarray(t, jnp.result_type(float))
    if self.interpolant == "linear":
      return -jnp.ones_like(t), jnp.ones_like(t)
    return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t), 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)

  def log_snr(self, t: Array) -> Array:
    """2 log((1 - t) / t), or -2 log tan(pi t / 2)."""
    t = jnp.asarray(t, jnp.result_type(float))
    if self.interpolant == "linear":
      return 2.0 * (jnp.log1p(-t) - jnp.log(t))
    return -2.0 * jnp.log(jnp.tan(0.5 * jnp.pi * t))

  def t_from_log_snr(self, lam: Array) -> Array:
    """sigmoid(-lambda / 2), or (2 / pi) arctan(exp(-lambda / 2))."""
    lam = jnp.asarray(lam, jnp.result_type(float))
    if self.interpolant == "linear":
      return jax.nn.sigmoid(-0.5 * lam)
    return 2.0 / jnp.pi * jnp.arctan(jnp.exp(-0.5 * lam))
