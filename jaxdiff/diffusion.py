"""The forward process q and the reverse model p of the discrete Gaussian diffusion.

Equations are those of Ho et al. 2020 ("DDPM") and Nichol & Dhariwal 2021 ("improved
DDPM"); v-prediction is Salimans & Ho 2022. Every function takes per-example integer
timesteps ``t`` of shape [B] (0-indexed) and broadcasts the schedule's coefficients to
the shape of ``x``. Variances are returned at the full shape of ``x``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax.numpy as jnp

from jaxdiff.schedules import Schedule

Array = Any

PREDICTIONS = ("eps", "x0", "v", "mean")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")


class PMeanVar(NamedTuple):
  """Mean, variance and log-variance of p(x_{t-1} | x_t), and the predicted x_0."""

  mean: Array
  variance: Array
  log_variance: Array
  pred_x0: Array


def extract(a: Array, t: Array, x_shape: tuple[int, ...]) -> Array:
  """Gathers ``a[t]`` and appends unit axes so it broadcasts against ``x_shape``."""
  out = jnp.take(a, t)
  return out.reshape(out.shape + (1,) * (len(x_shape) - out.ndim))


def _full(a: Array, t: Array, x: Array) -> Array:
  """``a[t]`` broadcast to the full shape of ``x``."""
  return jnp.broadcast_to(extract(a, t, x.shape), x.shape)


def check_prediction(prediction: str) -> None:
  """Raises ValueError unless ``prediction`` names a model parameterization."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def check_variance(variance: str) -> None:
  """Raises ValueError unless ``variance`` names a reverse-process variance."""
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")


def q_sample(schedule: Schedule, x0: Array, t: Array, noise: Array) -> Array:
  """Samples q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I); Ho et al. eq. 4."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
          + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_mean_variance(schedule: Schedule, x0: Array, t: Array) -> tuple[Array, Array, Array]:
  """Mean, variance and log-variance of q(x_t | x_0); Ho et al. eq. 4."""
  mean = extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * x0
  variance = _full(1.0 - schedule.alphas_cumprod, t, x0)
  log_variance = _full(schedule.log_one_minus_alphas_cumprod, t, x0)
  return mean, variance, log_variance


def q_posterior_mean_variance(schedule: Schedule, x0: Array, x_t: Array,
                              t: Array) -> tuple[Array, Array, Array]:
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0); Ho et al. eqs. 6-7."""
  mean = (extract(schedule.posterior_mean_coef1, t, x_t.shape) * x0
          + extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
  variance = _full(schedule.posterior_variance, t, x_t)
  log_variance = _full(schedule.posterior_log_variance_clipped, t, x_t)
  return mean, variance, log_variance


def predict_x0_from_eps(schedule: Schedule, x_t: Array, t: Array, eps: Array) -> Array:
  """x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t); Ho et al. eq. 4 inverted."""
  return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
          - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)


def predict_eps_from_x0(schedule: Schedule, x_t: Array, t: Array, x0: Array) -> Array:
  """eps = (x_t / sqrt(alpha-bar_t) - x_0) / sqrt(1 / alpha-bar_t - 1); Ho et al. eq. 4 inverted."""
  return ((extract(schedule.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - x0)
          / extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.shape))


def predict_v(schedule: Schedule, x0: Array, t: Array, eps: Array) -> Array:
  """v = sqrt(alpha-bar_t) eps - sqrt(1 - alpha-bar_t) x_0; Salimans & Ho 2022, Sec. 4."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x0.shape) * eps
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)


def predict_x0_from_v(schedule: Schedule, x_t: Array, t: Array, v: Array) -> Array:
  """x_0 = sqrt(alpha-bar_t) x_t - sqrt(1 - alpha-bar_t) v; Salimans & Ho 2022, Appendix D."""
  return (extract(schedule.sqrt_alphas_cumprod, t, x_t.shape) * x_t
          - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t.shape) * v)


def predict_x0_from_mean(schedule: Schedule, x_t: Array, t: Array, mean: Array) -> Array:
  """Inverts the posterior mean (Ho et al. eq. 7) for x_0 given the mean of x_{t-1}."""
  return ((mean - extract(schedule.posterior_mean_coef2, t, x_t.shape) * x_t)
          / extract(schedule.posterior_mean_coef1, t, x_t.shape))


_X0_FROM_OUTPUT = {
    "eps": predict_x0_from_eps,
    "x0": lambda schedule, x_t, t, x0: x0,
    "v": predict_x0_from_v,
    "mean": predict_x0_from_mean,
}


def split_model_output(model_output: Array, x_t: Array, *,
                       variance: str = "fixed_small") -> tuple[Array, Optional[Array]]:
  """Splits a model output into the prediction and, for learned variances, its values.

  Nichol & Dhariwal 2021, Sec. 3.1: a learned-variance model outputs 2C channels, the
  first C the prediction and the last C the variance parameters.

  Raises:
    ValueError: on an unknown variance, or channels that do not fit it.
  """
  check_variance(variance)
  channels = x_t.shape[-1]
  if variance.startswith("learned"):
    if model_output.shape[-1] != 2 * channels:
      raise ValueError(
          f"variance={variance!r} needs a model output with 2 * {channels} = {2 * channels} "
          f"channels (prediction, then variance), got shape {model_output.shape}")
    return model_output[..., :channels], model_output[..., channels:]
  if model_output.shape != x_t.shape:
    raise ValueError(f"model output shape {model_output.shape} must equal x_t's shape "
                     f"{x_t.shape} for variance={variance!r}")
  return model_output, None


def _process_x0(x0: Array, *, clip_denoised: bool,
                denoised_fn: Optional[Callable[[Array], Array]]) -> Array:
  if denoised_fn is not None:
    x0 = denoised_fn(x0)
  if clip_denoised:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return x0


def _model_log_variance(schedule: Schedule, variance: str, var_values: Optional[Array],
                        x_t: Array, t: Array) -> tuple[Array, Array]:
  """Variance and log-variance of p(x_{t-1} | x_t) for each variance type.

  fixed_small: the posterior variance beta-tilde_t (Ho et al. eq. 7); fixed_large: beta_t
  with beta-tilde_1 at t = 0; learned: the log-variance itself; learned_range: Nichol &
  Dhariwal eq. 15, log Sigma = v log beta_t + (1 - v) log beta-tilde_t with v = (out+1)/2.
  """
  if variance == "fixed_small":
    return _full(schedule.posterior_variance, t, x_t), _full(
        schedule.posterior_log_variance_clipped, t, x_t)
  if variance == "fixed_large":
    first = (schedule.posterior_variance[1:2] if schedule.num_timesteps > 1
             else schedule.betas[:1])
    large = jnp.concatenate([first, schedule.betas[1:]])
    return _full(large, t, x_t), _full(jnp.log(large), t, x_t)
  if variance == "learned":
    return jnp.exp(var_values), var_values
  min_log = extract(schedule.posterior_log_variance_clipped, t, x_t.shape)
  max_log = extract(jnp.log(schedule.betas), t, x_t.shape)
  frac = (var_values + 1.0) / 2.0
  log_variance = frac * max_log + (1.0 - frac) * min_log
  return jnp.exp(log_variance), log_variance


def predict_x0_eps(schedule: Schedule, model_output: Array, x_t: Array, t: Array, *,
                   prediction: str = "eps", variance: str = "fixed_small",
                   clip_denoised: bool = True,
                   denoised_fn: Optional[Callable[[Array], Array]] = None) -> tuple[Array, Array]:
  """The model's x_0 (after ``denoised_fn`` and clipping) and the eps consistent with it.

  This is what DDIM (Song et al. 2021, eq. 12) needs from any parameterization.
  """
  check_prediction(prediction)
  pred, _ = split_model_output(model_output, x_t, variance=variance)
  pred_x0 = _process_x0(_X0_FROM_OUTPUT[prediction](schedule, x_t, t, pred),
                        clip_denoised=clip_denoised, denoised_fn=denoised_fn)
  return pred_x0, predict_eps_from_x0(schedule, x_t, t, pred_x0)


def p_mean_variance(schedule: Schedule, model_output: Array, x_t: Array, t: Array, *,
                    prediction: str = "eps", variance: str = "fixed_small",
                    clip_denoised: bool = True,
                    denoised_fn: Optional[Callable[[Array], Array]] = None) -> PMeanVar:
  """p(x_{t-1} | x_t) = N(mean, variance) from a model output; Ho et al. eqs. 1, 11.

  The model predicts eps, x_0, v, or the mean of x_{t-1} directly. Except for "mean",
  the predicted x_0 is passed through ``denoised_fn`` and (if ``clip_denoised``) clipped
  to [-1, 1], and the mean is the posterior mean q(x_{t-1} | x_t, x_0 = pred_x0).

  Args:
    schedule: the diffusion's schedule.
    model_output: [B, ..., C], or [B, ..., 2C] for learned variances.
    x_t: [B, ..., C].
    t: int [B].
    prediction: "eps" | "x0" | "v" | "mean".
    variance: "fixed_small" | "fixed_large" | "learned" | "learned_range".
    clip_denoised: clip the predicted x_0 to [-1, 1].
    denoised_fn: optional map applied to the predicted x_0 before clipping (e.g.
      dynamic thresholding).
  """
  check_prediction(prediction)
  pred, var_values = split_model_output(model_output, x_t, variance=variance)
  model_variance, model_log_variance = _model_log_variance(schedule, variance, var_values, x_t, t)
  pred_x0 = _process_x0(_X0_FROM_OUTPUT[prediction](schedule, x_t, t, pred),
                        clip_denoised=clip_denoised, denoised_fn=denoised_fn)
  if prediction == "mean":
    mean = pred
  else:
    mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
  return PMeanVar(mean, model_variance, model_log_variance, pred_x0)
