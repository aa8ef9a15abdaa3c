"""Training objectives and the variational bound of the discrete Gaussian diffusion.

Units: KL terms and likelihoods are in nats elementwise; the ``*_bpd`` functions report
bits per dimension, i.e. the per-example mean over all non-batch axes divided by log 2
(Ho et al. 2020, Sec. 3.3 and Table 2).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jaxdiff import diffusion
from jaxdiff.schedules import Schedule

Array = Any
ModelFn = Callable[[Array, Array], Array]

LOSS_TYPES = ("mse", "kl", "rescaled_kl", "hybrid")
WEIGHTINGS = (None, "snr", "min_snr")


def mean_flat(x: Array) -> Array:
  """Mean over every axis but the leading batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats.

  KL = 0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2)
              + (mean1 - mean2)^2 exp(-logvar2) - 1).
  """
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def approx_standard_normal_cdf(x: Array) -> Array:
  """Phi(x) ~ 0.5 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); Page 1977, used by Ho et al."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: Array, *, means: Array, log_scales: Array) -> Array:
  """log p(x) of a Gaussian integrated over the bin of each 8-bit value; Ho et al. eq. 13.

  ``x`` lies on the grid {-1 + 2k/255}; the bin of x is [x - 1/255, x + 1/255], widened to
  (-inf, ...] at x = -1 and [..., inf) at x = 1. Probabilities are clamped at 1e-12 before
  the log, as in Ho et al.'s code.
  """
  centered = x - means
  inv_stdv = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def _vb_terms(schedule: Schedule, model_output: Array, x0: Array, x_t: Array, t: Array,
              **p_mean_variance_kwargs: Any) -> tuple[Array, Array]:
  """The variational-bound term at t in bits/dim, and the model's predicted x_0."""
  true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)
  out = diffusion.p_mean_variance(schedule, model_output, x_t, t, **p_mean_variance_kwargs)
  kl = mean_flat(normal_kl(true_mean, true_log_variance, out.mean, out.log_variance))
  decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
      x0, means=out.mean, log_scales=0.5 * out.log_variance))
  return jnp.where(t == 0, decoder_nll, kl) / math.log(2.0), out.pred_x0


def vb_terms_bpd(schedule: Schedule, model_output: Array, x0: Array, x_t: Array, t: Array,
                 **p_mean_variance_kwargs: Any) -> Array:
  """One term of the variational bound, in bits/dim, per example [B]; Ho et al. eq. 5.

  For t > 0: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); for t = 0: the
  decoder's negative log-likelihood L_0 = -log p(x_0 | x_1) on the 256-level grid.
  ``p_mean_variance_kwargs`` (prediction, variance, clip_denoised, ...) go to
  :func:`jaxdiff.diffusion.p_mean_variance`.
  """
  return _vb_terms(schedule, model_output, x0, x_t, t, **p_mean_variance_kwargs)[0]


def prior_bpd(schedule: Schedule, x0: Array) -> Array:
  """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per example [B]; Ho et al. eq. 5."""
  t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=jnp.int32)
  mean, _, log_variance = diffusion.q_mean_variance(schedule, x0, t)
  return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


def calc_bpd(model_fn: ModelFn, schedule: Schedule, x0: Array, rng: Array,
             **p_mean_variance_kwargs: Any) -> dict[str, Array]:
  """The full variational bound L_0 + ... + L_{T-1} + L_T in bits/dim; Ho et al. eq. 5.

  Every timestep is evaluated once, with independent noise per timestep, in one
  ``lax.scan`` (Nichol & Dhariwal 2021 report NLL the same way).

  Returns:
    "total_bpd" [B]: the bound; "prior_bpd" [B]: L_T; "vb" [B, T]: L_t for column t;
    "xstart_mse" [B, T]: mean squared error of the predicted x_0; "mse" [B, T]: mean
    squared error of the eps implied by the predicted x_0.
  """
  batch = x0.shape[0]
  keys = jax.random.split(rng, schedule.num_timesteps)

  def term(carry: None, step: tuple[Array, Array]) -> tuple[None, tuple[Array, Array, Array]]:
    t_scalar, key = step
    t = jnp.full((batch,), t_scalar, dtype=jnp.int32)
    noise = jax.random.normal(key, x0.shape, x0.dtype)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    vb, pred_x0 = _vb_terms(schedule, model_fn(x_t, t), x0, x_t, t, **p_mean_variance_kwargs)
    eps = diffusion.predict_eps_from_x0(schedule, x_t, t, pred_x0)
    return carry, (vb, mean_flat(jnp.square(pred_x0 - x0)), mean_flat(jnp.square(eps - noise)))

  steps = (jnp.arange(schedule.num_timesteps, dtype=jnp.int32), keys)
  _, (vb, xstart_mse, mse) = jax.lax.scan(term, None, steps)
  prior = prior_bpd(schedule, x0)
  return {
      "total_bpd": jnp.sum(vb, axis=0) + prior,
      "prior_bpd": prior,
      "vb": vb.T,
      "xstart_mse": xstart_mse.T,
      "mse": mse.T,
  }


def snr(schedule: Schedule, t: Array) -> Array:
  """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) (Kingma et al. 2021, eq. 2)."""
  alphas_cumprod = jnp.take(schedule.alphas_cumprod, t)
  return alphas_cumprod / (1.0 - alphas_cumprod)


def _mse_target(schedule: Schedule, prediction: str, x0: Array, x_t: Array, t: Array,
                noise: Array) -> Array:
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  if prediction == "v":
    return diffusion.predict_v(schedule, x0, t, noise)
  return diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)[0]


def _x0_loss_factor(schedule: Schedule, prediction: str, t: Array) -> Array:
  """d(x_0 error)^2 / d(prediction error)^2: converts a prediction-space MSE to x_0 space."""
  if prediction == "eps":
    return 1.0 / snr(schedule, t)
  if prediction == "v":
    return 1.0 - jnp.take(schedule.alphas_cumprod, t)
  if prediction == "mean":
    return 1.0 / jnp.square(jnp.take(schedule.posterior_mean_coef1, t))
  return jnp.ones_like(jnp.take(schedule.alphas_cumprod, t))


def loss_weight(schedule: Schedule, t: Array, *, prediction: str, weighting: Optional[str],
                min_snr_gamma: float = 5.0) -> Array:
  """Per-example weight [B] of the prediction-space MSE.

  ``weighting`` sets the weight w(t) of the MSE in x_0 space (Hang et al. 2023, Sec. 3):
  "snr": w = SNR(t) (for eps-prediction this is L_simple itself); "min_snr":
  w = min(SNR(t), gamma) (Min-SNR-gamma, their eq. 7). The returned weight is w(t) times
  the factor that converts the prediction's squared error to x_0's, e.g.
  min(SNR, gamma) / SNR for eps and min(SNR, gamma) / (SNR + 1) for v. ``None`` weighs
  every timestep by 1 in the prediction's own space (Ho et al.'s L_simple for eps).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
  if weighting is None:
    return jnp.ones_like(jnp.take(schedule.alphas_cumprod, t))
  snr_t = snr(schedule, t)
  w_x0 = snr_t if weighting == "snr" else jnp.minimum(snr_t, min_snr_gamma)
  return w_x0 * _x0_loss_factor(schedule, prediction, t)


def diffusion_loss(model_fn: ModelFn, schedule: Schedule, x0: Array, rng: Array, *,
                   prediction: str = "eps", loss_type: str = "mse",
                   weighting: Optional[str] = None, variance: str = "fixed_small",
                   clip_denoised: bool = False, min_snr_gamma: float = 5.0,
                   vlb_weight: float = 0.001, t: Optional[Array] = None,
                   noise: Optional[Array] = None) -> Array:
  """Per-example training loss [B] at a uniformly drawn timestep.

  loss_type:
    "mse": the weighted MSE of the prediction against its target (eps, x_0, v, or the
      posterior mean), mean over pixels: Ho et al. eq. 14 (L_simple) when unweighted.
    "kl": the bound's term L_t in bits/dim (Ho et al. eq. 5); "rescaled_kl": T L_t, an
      unbiased estimate of the whole bound minus L_T.
    "hybrid": Nichol & Dhariwal eq. 16, L_simple + lambda L_vlb with lambda =
      ``vlb_weight``, where L_vlb = T L_t is computed with the mean's gradient stopped so
      that it only trains the learned variance. Needs a learned variance.

  Args:
    model_fn: ``model_fn(x_t, t) -> model_output``.
    schedule: the diffusion's schedule.
    x0: clean data [B, ...] in [-1, 1].
    rng: key for t and the noise.
    prediction, variance, clip_denoised: as in :func:`jaxdiff.diffusion.p_mean_variance`.
    weighting: None | "snr" | "min_snr" (see :func:`loss_weight`); applies to the MSE.
    min_snr_gamma: gamma of Min-SNR weighting.
    vlb_weight: lambda of the hybrid loss.
    t: optional timesteps [B] to use instead of uniform draws.
    noise: optional noise to use instead of standard normal draws.
  """
  diffusion.check_prediction(prediction)
  diffusion.check_variance(variance)
  if loss_type not in LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}")
  if loss_type == "hybrid" and not variance.startswith("learned"):
    raise ValueError(f"loss_type='hybrid' trains a learned variance; got variance={variance!r}, "
                     "expected 'learned' or 'learned_range'")
  t_key, noise_key = jax.random.split(rng)
  batch = x0.shape[0]
  if t is None:
    t = jax.random.randint(t_key, (batch,), 0, schedule.num_timesteps, dtype=jnp.int32)
  if noise is None:
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  model_output = model_fn(x_t, t)
  pmv_kwargs = dict(prediction=prediction, variance=variance, clip_denoised=clip_denoised)
  if loss_type in ("kl", "rescaled_kl"):
    vb = vb_terms_bpd(schedule, model_output, x0, x_t, t, **pmv_kwargs)
    return vb * schedule.num_timesteps if loss_type == "rescaled_kl" else vb
  pred, var_values = diffusion.split_model_output(model_output, x_t, variance=variance)
  target = _mse_target(schedule, prediction, x0, x_t, t, noise)
  weight = loss_weight(schedule, t, prediction=prediction, weighting=weighting,
                       min_snr_gamma=min_snr_gamma)
  loss = weight * mean_flat(jnp.square(target - pred))
  if loss_type == "hybrid":
    frozen = jnp.concatenate([jax.lax.stop_gradient(pred), var_values], axis=-1)
    vb = vb_terms_bpd(schedule, frozen, x0, x_t, t, **pmv_kwargs)
    loss = loss + vlb_weight * schedule.num_timesteps * vb
  return loss
