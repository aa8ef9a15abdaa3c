"""Closed-form denoisers for Gaussian and Gaussian-mixture data (shared test helpers).

For data x_0 ~ sum_k pi_k N(mu_k, Sigma_k) and x_t = sqrt(a) x_0 + sqrt(1 - a) eps
(Ho et al. 2020, eq. 4; a = alpha-bar_t), each component's noisy marginal is
N(sqrt(a) mu_k, S_k) with S_k = a Sigma_k + (1 - a) I, and since Cov(eps, x_t) =
sqrt(1 - a) I the exact eps-prediction is

    E[eps | x_t]         = sum_k r_k(x_t) sqrt(1 - a) S_k^{-1} (x_t - sqrt(a) mu_k),
    r_k(x_t) = p(k | x_t) = softmax_k(log pi_k + log N(x_t; sqrt(a) mu_k, S_k)),

i.e. -sqrt(1 - a) grad log p_t(x_t) (Tweedie). S_k is diagonalized once: Sigma_k =
U_k diag(lam_k) U_k^T gives S_k^{-1} = U_k diag(1 / (a lam_k + 1 - a)) U_k^T. A Gaussian
is the one-component case; isotropic and diagonal covariances are special cases.

Data are [B, *event_shape]; covariances act on the flattened event (d = prod(event)).
Every function here is jit-able in (x_t, t) and works for any Schedule.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """sum_k weights[k] N(means[k], covs[k]); arrays kept in float64 NumPy."""

  weights: np.ndarray  # [K], positive, summing to 1
  means: np.ndarray  # [K, *event_shape]
  covs: np.ndarray  # [K, d, d], symmetric positive definite

  def __post_init__(self) -> None:
    weights = np.asarray(self.weights, np.float64)
    means = np.asarray(self.means, np.float64)
    covs = np.asarray(self.covs, np.float64)
    num, dim = weights.shape[0], int(np.prod(means.shape[1:]))
    if weights.ndim != 1 or np.any(weights <= 0) or abs(weights.sum() - 1) > 1e-9:
      raise ValueError(f"weights must be positive and sum to 1, got {weights}")
    if means.shape[0] != num or covs.shape != (num, dim, dim):
      raise ValueError(f"means {means.shape} / covs {covs.shape} do not fit {num} components "
                       f"of dimension {dim}")
    eigvals, eigvecs = np.linalg.eigh(covs)
    if np.any(eigvals <= 0) or not np.allclose(covs, np.swapaxes(covs, 1, 2)):
      raise ValueError("covs must be symmetric positive definite")
    for name, value in (("weights", weights), ("means", means), ("covs", covs),
                        ("eigvals", eigvals), ("eigvecs", eigvecs)):
      object.__setattr__(self, name, value)

  @classmethod
  def gaussian(cls, mean: Sequence[float], cov: Sequence[Sequence[float]]) -> "GaussianMixture":
    """A single Gaussian N(mean, cov)."""
    return cls(np.ones(1), np.asarray(mean)[None], np.asarray(cov)[None])

  @classmethod
  def diagonal(cls, weights: Sequence[float], means: Sequence[Any],
               variances: Sequence[Any]) -> "GaussianMixture":
    """Components with diagonal covariances: variances [K, *event], or [K] isotropic."""
    means = np.asarray(means, np.float64)
    variances = np.asarray(variances, np.float64)
    if variances.ndim == 1:
      variances = variances.reshape((-1,) + (1,) * (means.ndim - 1))
    flat = np.broadcast_to(variances, means.shape).reshape(means.shape[0], -1)
    return cls(np.asarray(weights), means, np.stack([np.diag(v) for v in flat]))

  @property
  def event_shape(self) -> tuple[int, ...]:
    return self.means.shape[1:]

  @property
  def dim(self) -> int:
    return int(np.prod(self.event_shape))

  @property
  def mean(self) -> np.ndarray:
    """E[x_0], flattened [d]."""
    return self.weights @ self.means.reshape(len(self.weights), -1)

  @property
  def cov(self) -> np.ndarray:
    """Cov[x_0] = sum_k pi_k (Sigma_k + mu_k mu_k^T) - mu mu^T, [d, d]."""
    flat = self.means.reshape(len(self.weights), -1)
    second = np.einsum("k,kij->ij", self.weights, self.covs + flat[:, :, None] * flat[:, None])
    return second - np.outer(self.mean, self.mean)

  def sample(self, seed: int, num: int) -> tuple[np.ndarray, np.ndarray]:
    """``num`` exact draws [num, *event] (float64) and their component labels [num]."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(self.weights), size=num, p=self.weights)
    z = rng.standard_normal((num, self.dim))
    chol = np.linalg.cholesky(self.covs)
    flat = self.means.reshape(len(self.weights), -1)[labels] + np.einsum(
        "nij,nj->ni", chol[labels], z)
    return flat.reshape((num,) + self.event_shape), labels


def _per_component(mix: GaussianMixture, schedule: Any, x_t: Array,
                   t: Array) -> tuple[Array, Array]:
  """log N(x_t; sqrt(a) mu_k, S_k) [B, K] and E[eps | x_t, k] [B, K, d]."""
  dtype = x_t.dtype
  a = schedule.alphas_cumprod[t].astype(dtype)[:, None, None]  # [B, 1, 1]
  x = x_t.reshape(x_t.shape[0], 1, -1)  # [B, 1, d]
  means = jnp.asarray(mix.means.reshape(len(mix.weights), -1), dtype)  # [K, d]
  eigvecs = jnp.asarray(mix.eigvecs, dtype)  # [K, d, d], columns are eigenvectors
  s = a * jnp.asarray(mix.eigvals, dtype) + (1.0 - a)  # [B, K, d], eigenvalues of S_k
  proj = jnp.einsum("kde,bkd->bke", eigvecs, x - jnp.sqrt(a) * means)  # U_k^T (x - m_k)
  log_normal = -0.5 * jnp.sum(proj ** 2 / s + jnp.log(2.0 * jnp.pi * s), axis=-1)
  eps = jnp.sqrt(1.0 - a) * jnp.einsum("kde,bke->bkd", eigvecs, proj / s)
  return log_normal, eps


def log_responsibilities(mix: GaussianMixture, schedule: Any, x_t: Array, t: Array) -> Array:
  """log p(k | x_t) [B, K]: the exact noisy-data classifier."""
  log_normal, _ = _per_component(mix, schedule, x_t, t)
  return jax.nn.log_softmax(jnp.log(jnp.asarray(mix.weights, x_t.dtype)) + log_normal, axis=-1)


def eps(mix: GaussianMixture, schedule: Any, x_t: Array, t: Array, *,
        labels: Optional[Array] = None) -> Array:
  """E[eps | x_t] [B, *event]; with ``labels`` [B], E[eps | x_t, component = label]."""
  log_normal, eps_k = _per_component(mix, schedule, x_t, t)
  if labels is None:
    weights = jax.nn.softmax(jnp.log(jnp.asarray(mix.weights, x_t.dtype)) + log_normal, axis=-1)
  else:
    weights = jax.nn.one_hot(labels, len(mix.weights), dtype=x_t.dtype)
  return jnp.einsum("bk,bkd->bd", weights, eps_k).reshape(x_t.shape)


def to_prediction(schedule: Any, x_t: Array, t: Array, eps_value: Array, *,
                  prediction: str) -> Array:
  """Converts an exact eps to the exact target of another parameterization.

  x0: E[x_0 | x_t] = (x_t - sqrt(1 - a) eps) / sqrt(a) (eq. 4 is linear); v: sqrt(a) eps -
  sqrt(1 - a) x0 (Salimans & Ho 2022); mean: E[x_{t-1} | x_t] = coef1 x0 + coef2 x_t
  (Ho et al. eq. 7, linear in x_0).
  """
  shape = (-1,) + (1,) * (x_t.ndim - 1)
  a = schedule.alphas_cumprod[t].astype(x_t.dtype).reshape(shape)
  x0 = (x_t - jnp.sqrt(1.0 - a) * eps_value) / jnp.sqrt(a)
  if prediction == "eps":
    return eps_value
  if prediction == "x0":
    return x0
  if prediction == "v":
    return jnp.sqrt(a) * eps_value - jnp.sqrt(1.0 - a) * x0
  if prediction == "mean":
    coef1 = schedule.posterior_mean_coef1[t].astype(x_t.dtype).reshape(shape)
    coef2 = schedule.posterior_mean_coef2[t].astype(x_t.dtype).reshape(shape)
    return coef1 * x0 + coef2 * x_t
  raise ValueError(f"unknown prediction {prediction!r}")


def model_fn(mix: GaussianMixture, schedule: Any, *,
             prediction: str = "eps") -> Callable[[Array, Array], Array]:
  """The Bayes-optimal ``model_fn(x_t, t)`` for this data and parameterization."""
  def fn(x_t: Array, t: Array) -> Array:
    return to_prediction(schedule, x_t, t, eps(mix, schedule, x_t, t), prediction=prediction)
  return fn


def conditional_model_fn(mix: GaussianMixture, schedule: Any, *,
                         null_label: int) -> Callable[[Array, Array, Array], Array]:
  """``model_fn(x_t, t, y)``: eps given component y, or unconditional where y == null_label."""
  def fn(x_t: Array, t: Array, y: Array) -> Array:
    cond = eps(mix, schedule, x_t, t, labels=jnp.where(y == null_label, 0, y))
    uncond = eps(mix, schedule, x_t, t)
    is_null = (y == null_label).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return jnp.where(is_null, uncond, cond)
  return fn


def classifier_log_prob(mix: GaussianMixture, schedule: Any,
                        labels: int | Array) -> Callable[[Array, Array], Array]:
  """``log_prob_fn(x_t, t) -> [B]``: the exact log p(y = labels | x_t) (labels: int or [B])."""
  def fn(x_t: Array, t: Array) -> Array:
    log_resp = log_responsibilities(mix, schedule, x_t, t)
    wanted = jnp.broadcast_to(jnp.asarray(labels), (x_t.shape[0],))
    return jnp.take_along_axis(log_resp, wanted[:, None], axis=1)[:, 0]
  return fn


# --- NumPy float64 oracles: exact output distributions of samplers for Gaussian data ----
#
# For Gaussian data the exact eps-prediction is affine in x_t, so every sampler step is
# x <- A x + b + (Gaussian noise), and its output is exactly Gaussian. These helpers are
# written from the papers' equations, independently of jaxdiff, in float64.


def linear_alphas_cumprod(num_timesteps: int = 1000) -> np.ndarray:
  """alpha-bar of Ho et al.'s linear schedule (betas 1e-4 .. 0.02 at T = 1000), eq. 4."""
  scale = 1000.0 / num_timesteps
  betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def eps_affine(mean: np.ndarray, cov: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
  """(G, h) with E[eps | x_t] = G x_t + h for N(mean, cov) data at alpha-bar a."""
  dim = len(mean)
  gain = np.sqrt(1.0 - a) * np.linalg.inv(a * cov + (1.0 - a) * np.eye(dim))
  return gain, -np.sqrt(a) * gain @ mean


def x0_eps_affine(mean: np.ndarray, cov: np.ndarray,
                  a: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(P, q, G, h): E[x_0 | x_t] = P x_t + q and E[eps | x_t] = G x_t + h (eq. 4 inverted)."""
  gain, h = eps_affine(mean, cov, a)
  eye = np.eye(len(mean))
  return ((eye - np.sqrt(1.0 - a) * gain) / np.sqrt(a), -np.sqrt(1.0 - a) * h / np.sqrt(a),
          gain, h)


def propagate(mean: np.ndarray, cov: np.ndarray, a_mat: np.ndarray, b: np.ndarray,
              noise_var: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Moments of A x + b + n for x ~ N(mean, cov) and independent n ~ N(0, noise_var I)."""
  return a_mat @ mean + b, a_mat @ cov @ a_mat.T + noise_var * np.eye(len(mean))


def ddpm_step_affine(mean: np.ndarray, cov: np.ndarray, a: float, a_prev: float, *,
                     variance: str, last: bool) -> tuple[np.ndarray, np.ndarray, float]:
  """Ancestral step (Ho et al. eqs. 6-7, 11) with the exact x0: (A, b, noise variance).

  beta = 1 - a / a_prev; mean = c1 x0_hat + c2 x_t with c1 = sqrt(a_prev) beta / (1 - a),
  c2 = sqrt(1 - beta) (1 - a_prev) / (1 - a); noise beta-tilde (fixed_small) or beta
  (fixed_large), none at the last step.
  """
  beta = 1.0 - a / a_prev
  p, q, _, _ = x0_eps_affine(mean, cov, a)
  c1 = np.sqrt(a_prev) * beta / (1.0 - a)
  c2 = np.sqrt(1.0 - beta) * (1.0 - a_prev) / (1.0 - a)
  noise = {"fixed_small": (1.0 - a_prev) / (1.0 - a) * beta, "fixed_large": beta}[variance]
  return c1 * p + c2 * np.eye(len(mean)), c1 * q, 0.0 if last else noise


def ddim_step_affine(mean: np.ndarray, cov: np.ndarray, a: float, a_prev: float, *,
                     eta: float) -> tuple[np.ndarray, np.ndarray, float]:
  """DDIM step (Song et al. eq. 12, sigma of eq. 16) with the exact eps: (A, b, sigma^2)."""
  sigma2 = eta ** 2 * (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)
  c = np.sqrt(1.0 - a_prev - sigma2)
  p, q, g, h = x0_eps_affine(mean, cov, a)
  return np.sqrt(a_prev) * p + c * g, np.sqrt(a_prev) * q + c * h, sigma2


def reverse_chain(alphas_cumprod: np.ndarray, step: Callable[..., Any]) -> list[Any]:
  """``step(a, a_prev, last)`` for a reverse chain over these alpha-bars, last one first."""
  a = np.asarray(alphas_cumprod)
  return [step(a[k], a[k - 1] if k > 0 else 1.0, k == 0) for k in range(len(a) - 1, -1, -1)]


def chain_moments(steps: Sequence[Any], mean: np.ndarray,
                  cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Output moments of a chain of (A, b, noise variance) steps from N(mean, cov)."""
  for a_mat, b, noise in steps:
    mean, cov = propagate(mean, cov, a_mat, b, noise)
  return mean, cov


def compose(steps: Sequence[Any], dim: int) -> tuple[np.ndarray, np.ndarray]:
  """The deterministic part x -> M x + c of a chain of (A, b, noise) steps."""
  mat, off = np.eye(dim), np.zeros(dim)
  for a_mat, b, _ in steps:
    mat, off = a_mat @ mat, a_mat @ off + b
  return mat, off
