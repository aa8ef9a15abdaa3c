"""Exact targets for testing diffusion samplers and models: closed-form denoisers and laws.

For data that is a mixture of Gaussians, x_0 ~ sum_k pi_k N(mu_k, Sigma_k), and any noise
process x_t = alpha_t x_0 + sigma_t eps (`jaxdiff.processes`), every quantity a model is
trained to predict is closed form. Component k's noisy marginal is N(alpha mu_k, S_k) with
S_k = alpha^2 Sigma_k + sigma^2 I, and since Cov(eps, x_t | k) = sigma I,

    E[eps | x_t]  = sum_k r_k(x_t) sigma S_k^{-1} (x_t - alpha mu_k),
    r_k(x_t)      = p(k | x_t) = softmax_k(log pi_k + log N(x_t; alpha mu_k, S_k)),

i.e. -sigma grad log p_t(x_t) (Tweedie's formula; Efron 2011), from which x0, v and the
score follow (`to_prediction`). The posterior mean E[x_0 | x_t, k] = mu_k + alpha Sigma_k
S_k^{-1} (x_t - alpha mu_k) is computed directly as well, so that the flow velocity
E[alpha' x_0 + sigma' eps | x_t] (`velocity`) stays finite at both ends of a flow (alpha = 0
or sigma = 0), and `edm_network_fn` is the exact raw network F of an EDM-preconditioned model
(Karras et al. 2022, Table 1). `model_fn(mix, process, prediction=...)` is therefore the
Bayes-optimal model of a trained network, in every parameterization, with no training: a
sampler that is exact must reproduce the mixture's weights, means and covariances.

For Gaussian data (one component) the exact eps is affine in x_t, so every deterministic
sampler is an affine map of x_T and every stochastic step adds Gaussian noise: the output of
a whole chain is exactly Gaussian. The NumPy float64 oracles at the end compute those laws
from the papers' equations, independently of jaxdiff (`ddpm_step_affine`, `ddim_step_affine`,
`chain_moments`; `affine_pushforward` measures a deterministic sampler's exact law from
dim + 1 runs; `gaussian_pf_map` is the exact probability-flow map).

Arrays are [B, *event_shape]; covariances act on the flattened event (d = prod(event)).
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
  means: np.ndarray    # [K, *event_shape]
  covs: np.ndarray     # [K, d, d], symmetric positive definite

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


def _coefficients(process: Any, t: Array, dtype: Any) -> tuple[Array, Array]:
  """(alpha_t, sigma_t) [B] of a process (or of a ``coeffs(t)`` callable) in ``dtype``."""
  coeffs = process.marginal_coeffs if hasattr(process, "marginal_coeffs") else process
  alpha, sigma = coeffs(t)
  return jnp.asarray(alpha, dtype), jnp.asarray(sigma, dtype)


def _per_component(mix: GaussianMixture, process: Any, x_t: Array,
                   t: Array) -> tuple[Array, Array, Array]:
  """log N(x_t; alpha mu_k, S_k) [B, K], E[eps | x_t, k] and E[x_0 | x_t, k] [B, K, d]."""
  dtype = x_t.dtype
  alpha, sigma = _coefficients(process, t, dtype)
  alpha, sigma = alpha[:, None, None], sigma[:, None, None]  # [B, 1, 1]
  x = x_t.reshape(x_t.shape[0], 1, -1)  # [B, 1, d]
  means = jnp.asarray(mix.means.reshape(len(mix.weights), -1), dtype)  # [K, d]
  eigvecs = jnp.asarray(mix.eigvecs, dtype)  # [K, d, d], columns are eigenvectors
  eigvals = jnp.asarray(mix.eigvals, dtype)
  s = alpha**2 * eigvals + sigma**2  # [B, K, d], eigenvalues of S_k
  proj = jnp.einsum("kde,bkd->bke", eigvecs, x - alpha * means)  # U_k^T (x - alpha mu_k)
  log_normal = -0.5 * jnp.sum(proj**2 / s + jnp.log(2.0 * jnp.pi * s), axis=-1)
  eps = sigma * jnp.einsum("kde,bke->bkd", eigvecs, proj / s)
  x0 = means + alpha * jnp.einsum("kde,bke->bkd", eigvecs, eigvals * proj / s)
  return log_normal, eps, x0


def _mixed(mix: GaussianMixture, process: Any, x_t: Array, t: Array,
           labels: Optional[Array]) -> tuple[Array, Array]:
  """(E[eps | x_t], E[x_0 | x_t]) [B, d], or given the component ``labels`` [B]."""
  log_normal, eps_k, x0_k = _per_component(mix, process, x_t, t)
  if labels is None:
    weights = jax.nn.softmax(jnp.log(jnp.asarray(mix.weights, x_t.dtype)) + log_normal, axis=-1)
  else:
    weights = jax.nn.one_hot(labels, len(mix.weights), dtype=x_t.dtype)
  return (jnp.einsum("bk,bkd->bd", weights, eps_k), jnp.einsum("bk,bkd->bd", weights, x0_k))


def log_responsibilities(mix: GaussianMixture, process: Any, x_t: Array, t: Array) -> Array:
  """log p(k | x_t) [B, K]: the exact noisy-data classifier."""
  log_normal = _per_component(mix, process, x_t, t)[0]
  return jax.nn.log_softmax(jnp.log(jnp.asarray(mix.weights, x_t.dtype)) + log_normal, axis=-1)


def log_density(mix: GaussianMixture, process: Any, x_t: Array, t: Array) -> Array:
  """log p_t(x_t) [B], the exact density of the noisy data."""
  log_normal = _per_component(mix, process, x_t, t)[0]
  return jax.nn.logsumexp(jnp.log(jnp.asarray(mix.weights, x_t.dtype)) + log_normal, axis=-1)


def eps(mix: GaussianMixture, process: Any, x_t: Array, t: Array, *,
        labels: Optional[Array] = None) -> Array:
  """E[eps | x_t] [B, *event]; with ``labels`` [B], E[eps | x_t, component = label]."""
  return _mixed(mix, process, x_t, t, labels)[0].reshape(x_t.shape)


def posterior_mean(mix: GaussianMixture, process: Any, x_t: Array, t: Array, *,
                   labels: Optional[Array] = None) -> Array:
  """E[x_0 | x_t] [B, *event] computed directly (finite where alpha = 0: the data mean)."""
  return _mixed(mix, process, x_t, t, labels)[1].reshape(x_t.shape)


def velocity(mix: GaussianMixture, process: Any, x_t: Array, t: Array, *,
             labels: Optional[Array] = None) -> Array:
  """The exact flow velocity E[alpha'(t) x_0 + sigma'(t) eps | x_t] [B, *event] (Lipman et al.
  2023, eq. 8: the marginal vector field), finite on all of [0, 1] for a flow; alpha' and
  sigma' are the process's ``coeff_derivatives``."""
  eps_value, x0 = _mixed(mix, process, x_t, t, labels)
  dalpha, dsigma = (jnp.asarray(c, x_t.dtype)[:, None] for c in process.coeff_derivatives(t))
  return (dalpha * x0 + dsigma * eps_value).reshape(x_t.shape)


def to_prediction(process: Any, x_t: Array, t: Array, eps_value: Array, *,
                  prediction: str) -> Array:
  """Converts an exact eps to the exact target of another parameterization.

  x0: E[x_0 | x_t] = (x_t - sigma eps) / alpha (the kernel is linear); v: alpha eps -
  sigma x0 (Salimans & Ho 2022); score: -eps / sigma (Tweedie); mean (a discrete schedule at
  integer t): E[x_{t-1} | x_t] = coef1 x0 + coef2 x_t (Ho et al. 2020, eq. 7, linear in x0).
  """
  shape = (-1,) + (1,) * (x_t.ndim - 1)
  alpha, sigma = (c.reshape(shape) for c in _coefficients(process, t, x_t.dtype))
  x0 = (x_t - sigma * eps_value) / alpha
  targets = {"eps": lambda: eps_value, "x0": lambda: x0,
             "v": lambda: alpha * eps_value - sigma * x0, "score": lambda: -eps_value / sigma}
  if prediction == "mean":
    coef1 = process.posterior_mean_coef1[t].astype(x_t.dtype).reshape(shape)
    coef2 = process.posterior_mean_coef2[t].astype(x_t.dtype).reshape(shape)
    return coef1 * x0 + coef2 * x_t
  if prediction not in targets:
    raise ValueError(f"unknown prediction {prediction!r}; expected one of "
                     f"{sorted(targets) + ['mean']}")
  return targets[prediction]()


def _exact(mix: GaussianMixture, process: Any, x_t: Array, t: Array, prediction: str,
           labels: Optional[Array] = None) -> Array:
  if prediction == "velocity":
    return velocity(mix, process, x_t, t, labels=labels)
  return to_prediction(process, x_t, t, eps(mix, process, x_t, t, labels=labels),
                       prediction=prediction)


def model_fn(mix: GaussianMixture, process: Any, *,
             prediction: str = "eps") -> Callable[[Array, Array], Array]:
  """The Bayes-optimal ``model_fn(x_t, t)`` for this data, process and parameterization
  (eps, x0, v, score, mean, or the flow ``velocity``)."""
  def fn(x_t: Array, t: Array) -> Array:
    return _exact(mix, process, x_t, t, prediction)
  return fn


def conditional_model_fn(mix: GaussianMixture, process: Any, *, null_label: int,
                         prediction: str = "eps") -> Callable[[Array, Array, Array], Array]:
  """``model_fn(x_t, t, y)``: the prediction given component y, or unconditional where
  y == null_label (a classifier-free-guidance model trained with label dropout)."""
  def fn(x_t: Array, t: Array, y: Array) -> Array:
    cond = _exact(mix, process, x_t, t, prediction, labels=jnp.where(y == null_label, 0, y))
    uncond = _exact(mix, process, x_t, t, prediction)
    is_null = (y == null_label).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return jnp.where(is_null, uncond, cond)
  return fn


def edm_network_fn(mix: GaussianMixture, *,
                   sigma_data: float) -> Callable[[Array, Array], Array]:
  """``net(x_in, c_noise)``: the exact raw network F of an EDM-preconditioned denoiser on the
  sigma axis (x = x_0 + sigma n; Karras et al. 2022, Table 1 and eq. 7), written from the
  table: sigma = exp(4 c_noise), x = x_in sqrt(sigma^2 + sigma_data^2), and
  F = (D(x; sigma) - c_skip x) / c_out with c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2), D = E[x_0 | x]."""
  def net(x_in: Array, c_noise: Array) -> Array:
    sigma = jnp.exp(4.0 * jnp.asarray(c_noise, x_in.dtype))
    shape = (-1,) + (1,) * (x_in.ndim - 1)
    total = (sigma**2 + sigma_data**2).reshape(shape)
    x = x_in * jnp.sqrt(total)
    denoised = posterior_mean(mix, lambda u: (jnp.ones_like(u), u), x, sigma)
    c_skip = sigma_data**2 / total
    c_out = sigma.reshape(shape) * sigma_data / jnp.sqrt(total)
    return (denoised - c_skip * x) / c_out
  return net


def classifier_log_prob(mix: GaussianMixture, process: Any,
                        labels: int | Array) -> Callable[[Array, Array], Array]:
  """``log_prob_fn(x_t, t) -> [B]``: the exact log p(y = labels | x_t) (labels: int or [B])."""
  def fn(x_t: Array, t: Array) -> Array:
    log_resp = log_responsibilities(mix, process, x_t, t)
    wanted = jnp.broadcast_to(jnp.asarray(labels), (x_t.shape[0],))
    return jnp.take_along_axis(log_resp, wanted[:, None], axis=1)[:, 0]
  return fn


# --- Conditional Gaussians: x given a noisy linear observation y = c A x + n ------------


def downsample_operator(event_shape: Sequence[int], factor: int) -> np.ndarray:
  """The matrix [h * w * C, H * W * C] of area downsampling (the mean of each factor x
  factor block, row-major HWC flattening) of [H, W, C] images, from its definition."""
  height, width, channels = event_shape
  rows = []
  for i in range(height // factor):
    for j in range(width // factor):
      for c in range(channels):
        row = np.zeros(event_shape)
        row[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor, c] = 1.0 / factor**2
        rows.append(row.ravel())
  return np.asarray(rows)


def augmentation_coefficients(level: Any) -> tuple[Any, Any]:
  """(cos(pi s / 2), sin(pi s / 2)^2): the scale and noise variance of an observation
  noise-augmented at level s (CDM, as `jaxdiff.data.tasks.noise_augment`)."""
  angle = 0.5 * np.pi * level
  return jnp.cos(angle), jnp.sin(angle) ** 2


@dataclasses.dataclass(frozen=True, eq=False)
class ObservedGaussian:
  """x ~ N(mean, cov) (event_shape, flattened d) observed as y = scale * A x + n,
  n ~ N(0, noise_var I): p(x | y) is Gaussian (Gaussian conditioning),

      K = scale C A^T (scale^2 A C A^T + noise_var I)^{-1},
      E[x | y] = mean + K (y - scale A mean),   Cov[x | y] = C - scale K A C,

  the law an exact conditional sampler (super-resolution: A = `downsample_operator`)
  reproduces. `model_fn` is the Bayes-optimal conditional model, eps given (x_t, y) on any
  process: x | y is Gaussian N(m, P), so E[eps | x_t, y] = sigma (alpha^2 P + sigma^2 I)^{-1}
  (x_t - alpha m), computed per example (y, scale and noise_var may differ by row)."""

  mean: np.ndarray      # [*event_shape]
  cov: np.ndarray       # [d, d], symmetric positive definite
  operator: np.ndarray  # [k, d]

  def posterior(self, y: np.ndarray, *, scale: float = 1.0,
                noise_var: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """float64 (E[x | y] [d], Cov[x | y] [d, d]) for one observation y [k]."""
    mean, cov, a = (np.asarray(v, np.float64) for v in (self.mean, self.cov, self.operator))
    mean = mean.ravel()
    gain = scale * cov @ a.T @ np.linalg.inv(scale**2 * a @ cov @ a.T
                                             + noise_var * np.eye(len(a)))
    return (mean + gain @ (np.asarray(y, np.float64).ravel() - scale * a @ mean),
            cov - scale * gain @ a @ cov)

  def eps(self, process: Any, x_t: Array, t: Array, y: Array, *, scale: Any = 1.0,
          noise_var: Any = 0.0) -> Array:
    """E[eps | x_t, y] [B, *event] (class docstring); scale, noise_var scalars or [B]."""
    dtype, batch = x_t.dtype, x_t.shape[0]
    mean, cov, a = (jnp.asarray(v, dtype) for v in (np.ravel(self.mean), self.cov,
                                                    self.operator))
    scale = jnp.broadcast_to(jnp.asarray(scale, dtype), (batch,))[:, None, None]
    noise_var = jnp.broadcast_to(jnp.asarray(noise_var, dtype), (batch,))[:, None, None]
    s_y = scale**2 * (a @ cov @ a.T) + noise_var * jnp.eye(a.shape[0], dtype=dtype)
    gain = scale * jnp.swapaxes(jnp.linalg.solve(s_y, jnp.broadcast_to(
        a @ cov, (batch,) + (a @ cov).shape)), 1, 2)                    # [B, d, k]
    residual = y.reshape(batch, -1).astype(dtype) - scale[:, :, 0] * (a @ mean)
    post_mean = mean + jnp.einsum("bdk,bk->bd", gain, residual)
    post_cov = cov - scale * gain @ a @ cov
    alpha, sigma = _coefficients(process, t, dtype)
    s_t = alpha[:, None, None]**2 * post_cov + sigma[:, None, None]**2 * jnp.eye(len(mean),
                                                                                 dtype=dtype)
    x = x_t.reshape(batch, -1) - alpha[:, None] * post_mean
    return (sigma[:, None] * jnp.linalg.solve(s_t, x[..., None])[..., 0]).reshape(x_t.shape)

  def model_fn(self, process: Any, *, prediction: str = "eps"
               ) -> Callable[..., Array]:
    """The exact ``model_fn(x_t, t, y, aug_level=None)``: with ``aug_level`` s [B], y is
    taken as observed through `augmentation_coefficients(s)` (CDM's augmentation)."""
    def fn(x_t: Array, t: Array, y: Array, aug_level: Optional[Array] = None) -> Array:
      scale, noise_var = (1.0, 0.0) if aug_level is None else augmentation_coefficients(
          jnp.asarray(aug_level, x_t.dtype))
      value = self.eps(process, x_t, t, y, scale=scale, noise_var=noise_var)
      return to_prediction(process, x_t, t, value, prediction=prediction)
    return fn


# --- NumPy float64 oracles: exact laws of whole chains for Gaussian data --------------


def linear_alphas_cumprod(num_timesteps: int = 1000) -> np.ndarray:
  """alpha-bar of Ho et al.'s linear schedule (betas 1e-4 .. 0.02 at T = 1000), eq. 4."""
  scale = 1000.0 / num_timesteps
  betas = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
  return np.cumprod(1.0 - betas)


def eps_affine(mean: np.ndarray, cov: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
  """(G, h) with E[eps | x_t] = G x_t + h for N(mean, cov) data at alpha-bar a (VP)."""
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
  sigma2 = eta**2 * (1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev)
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


def gaussian_marginal(mean: np.ndarray, cov: np.ndarray, alpha: float,
                      sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of p_t for Gaussian data N(mean, cov): N(alpha m, alpha^2 C + sigma^2 I)."""
  return alpha * mean, alpha**2 * cov + sigma**2 * np.eye(len(mean))


def gaussian_pf_map(mean: np.ndarray, cov: np.ndarray, coeffs_from: tuple[float, float],
                    coeffs_to: tuple[float, float], x: np.ndarray) -> np.ndarray:
  """The exact probability-flow map between two times, for Gaussian data (rows of x).

  The probability-flow ODE (Song et al. 2021, eq. 13) is linear with a velocity that
  commutes with C, so it maps N(m_a, S_a) to N(m_b, S_b) by x -> m_b + S_b^{1/2} S_a^{-1/2}
  (x - m_a), S's sharing C's eigenvectors; coeffs are (alpha, sigma) at the two times.
  """
  (alpha_a, sigma_a), (alpha_b, sigma_b) = coeffs_from, coeffs_to
  c, v = np.linalg.eigh(cov)  # C's eigenvectors (those of S_a also when S_a is isotropic)
  ea, eb = alpha_a**2 * c + sigma_a**2, alpha_b**2 * c + sigma_b**2
  m_a, m_b = alpha_a * np.asarray(mean), alpha_b * np.asarray(mean)
  a = v @ np.diag(np.sqrt(eb / ea)) @ v.T
  return m_b + (np.asarray(x) - m_a) @ a.T


def affine_pushforward(run: Callable[[Array], Array], dim: int,
                       prior_std: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of a deterministic sampler's output for x_T ~ N(0, prior_std^2 I).

  With a Gaussian's affine denoiser every solver step is affine in x, so the sampler is
  x_T -> c + M x_T: ``run`` (samples from a given x_T [dim + 1, dim]) on 0 and the unit
  vectors gives c and M, and the output law is exactly N(c, prior_std^2 M M^T).
  """
  x_T = jnp.asarray(np.concatenate([np.zeros((1, dim)), np.eye(dim)]))
  out = np.asarray(run(x_T), np.float64)
  m = (out[1:] - out[0]).T
  return out[0], float(prior_std) ** 2 * m @ m.T


def gaussian_kl(m0: np.ndarray, s0: np.ndarray, m1: np.ndarray, s1: np.ndarray) -> float:
  """KL(N(m0, s0) || N(m1, s1)) in nats."""
  d = len(m0)
  s1_inv = np.linalg.inv(s1)
  diff = m1 - m0
  return 0.5 * (np.trace(s1_inv @ s0) + diff @ s1_inv @ diff - d
                + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1])


# --- Few-step generation: exact teacher maps for Gaussian data, any (alpha, sigma) -------


def x0_affine(mean: np.ndarray, cov: np.ndarray, alpha: float,
              sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """(P, q) with E[x_0 | x_t] = P x_t + q for N(mean, cov) data and x_t = alpha x_0 + sigma n:
  P = alpha C (alpha^2 C + sigma^2 I)^{-1}, q = (I - alpha P) mean (Gaussian conditioning)."""
  dim = len(mean)
  gain = alpha * cov @ np.linalg.inv(alpha**2 * cov + sigma**2 * np.eye(dim))
  return gain, (np.eye(dim) - alpha * gain) @ mean


def ddim_x_step_affine(mean: np.ndarray, cov: np.ndarray, coeffs_from: tuple[float, float],
                       coeffs_to: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
  """(A, b) of the eta = 0 DDIM step x_t -> alpha_s x0 + sigma_s / sigma_t (x_t - alpha_t x0)
  with the exact x0 (Song et al. 2021, eq. 12; Salimans & Ho 2022, Algorithm 2); (alpha_s,
  sigma_s) = (1, 0) is the clean end."""
  (a_t, s_t), (a_s, s_s) = coeffs_from, coeffs_to
  p, q = x0_affine(mean, cov, a_t, s_t)
  scale = a_s - s_s * a_t / s_t
  return scale * p + s_s / s_t * np.eye(len(mean)), scale * q


def two_step_distillation_target_affine(mean: np.ndarray, cov: np.ndarray,
                                        coeffs: Sequence[tuple[float, float]]
                                        ) -> tuple[np.ndarray, np.ndarray]:
  """(A, b) with x-tilde = A z_t + b, the target of Salimans & Ho 2022, Algorithm 2: two exact
  DDIM steps t -> t' -> t'' (coeffs: (alpha, sigma) at the three points), then the x0 whose
  one DDIM step t -> t'' lands there: x-tilde = (z'' - (sigma''/sigma) z) / (alpha'' -
  (sigma''/sigma) alpha)."""
  (a_t, s_t), _, (a_e, s_e) = coeffs
  a1, b1 = ddim_x_step_affine(mean, cov, coeffs[0], coeffs[1])
  a2, b2 = ddim_x_step_affine(mean, cov, coeffs[1], coeffs[2])
  ratio = s_e / s_t
  denom = a_e - ratio * a_t
  return (a2 @ a1 - ratio * np.eye(len(mean))) / denom, (a2 @ b1 + b2) / denom
