"""Ancestral sampling of the reverse process (Ho et al. 2020, Algorithm 2) on any grid.

A step from s to t (t < s, or the clean end) draws x_t from the model's p(x_t | x_s): the
posterior q(x_t | x_s, x_0 = x0_hat) of the forward process (Kingma et al. 2021, eq. 10-11,
which is Ho et al. 2020, eq. 6-7 for consecutive timesteps) with

    mean     = alpha_t sigma^2_{s|t} / sigma_s^2 x0_hat + (alpha_s / alpha_t) sigma_t^2 /
               sigma_s^2 x_s,
    variance = sigma_t^2 sigma^2_{s|t} / sigma_s^2        ("fixed_small", beta-tilde)
            or sigma^2_{s|t}                                ("fixed_large", beta),

or a learned variance (Nichol & Dhariwal 2021, Sec. 3.1, eq. 15), and no noise on the last
step. On a respaced discrete chain these are exactly the respaced betas of Nichol & Dhariwal
(Sec. 4). Ho et al.'s conventions hold on every grid: the log-variance at the last step is
"clipped" to that of the step before it (for "fixed_large" the variance too).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, pair_inputs, scalar

Array = Any

VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")


def ancestral_inputs(process: Any, times: Array, opts: Mapping[str, Any]) -> StepInput:
  """Pair steps to the clean end, with each step's posterior variance, its clipped
  log-variance and Ho et al.'s "fixed_large" variance."""
  del opts
  inp = pair_inputs(process, times, ends_clean=True)
  beta = inp.transition_variance
  posterior = inp.t.sigma**2 * beta / inp.s.sigma**2
  before_last = posterior[-2:-1] if beta.shape[0] > 1 else beta[-1:]
  clipped = jnp.concatenate([posterior[:-1], before_last])
  large = jnp.concatenate([beta[:-1], before_last])
  return inp.replace(extra=dict(posterior=posterior, log_posterior_clipped=jnp.log(clipped),
                                large=large))


def _variance(variance: str, inp: StepInput, values: Array | None,
              x: Array) -> tuple[Array, Array]:
  """(variance, log-variance) of p(x_t | x_s) for the variance type (module docstring)."""
  extra = inp.extra
  clipped = scalar(extra["log_posterior_clipped"], x)
  if variance == "fixed_small":
    return scalar(extra["posterior"], x), clipped
  if variance == "fixed_large":
    large = scalar(extra["large"], x)
    return large, jnp.log(large)
  if variance == "learned":
    return jnp.exp(values), values
  frac = (values + 1.0) / 2.0
  log_variance = frac * jnp.log(scalar(inp.transition_variance, x)) + (1.0 - frac) * clipped
  return jnp.exp(log_variance), log_variance


def ancestral_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
                   opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """One draw of p(x_t | x_s) (module docstring); with ``mean_shift_fn`` the mean moves by
  variance * mean_shift_fn(x_s, s) (Dhariwal & Nichol 2021, Algorithm 1)."""
  s, t = inp.s, inp.t
  time = batch_time(s.t, x)
  out = denoiser(x, time)
  sigma_s2 = scalar(s.sigma, x) ** 2
  coef_x0 = scalar(t.alpha, x) * scalar(inp.transition_variance, x) / sigma_s2
  coef_x = scalar(s.alpha / t.alpha, x) * scalar(t.sigma, x) ** 2 / sigma_s2
  mean = coef_x0 * out.x0 + coef_x * x
  variance, log_variance = _variance(opts["variance"], inp, out.variance_values, x)
  if opts.get("mean_shift_fn") is not None:
    mean = mean + variance * opts["mean_shift_fn"](x, time)
  noise = jax.random.normal(key, x.shape, x.dtype)
  nonzero = (t.sigma > 0).astype(x.dtype)
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise, state


def _check_options(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  del process, num_steps
  check_variance(opts["variance"])


DDPM = SamplerSpec(
    name="ddpm", step=ancestral_step, inputs=ancestral_inputs, stochastic=True,
    validate=_check_options,
    options={"variance": "fixed_small", "mean_shift_fn": None},
    summary="ancestral sampling, Ho et al. 2020 Algorithm 2 (every step of a Schedule by "
            "default)")


def check_variance(variance: str) -> None:
  """Raises ValueError unless ``variance`` names a reverse-process variance."""
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; expected one of {VARIANCES}")
