"""Denoising diffusion implicit models (Song, Meng & Ermon 2021) on any grid, and inversion.

A step from s to t (or the clean end) is Song et al.'s eq. 12 with the noise of eq. 16:

    x_t = alpha_t x0_hat + sqrt(sigma_t^2 - c^2) eps_hat + c z,
    c^2 = eta^2 sigma_t^2 sigma^2_{s|t} / sigma_s^2        (eta times the posterior variance)

so eta = 0 is the deterministic DDIM (the first-order solver of the probability-flow ODE in
lambda, Lu et al. 2022a, Sec. 4.1) and eta = 1 has DDPM's posterior variance.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from jaxdiff.samplers.spec import SamplerSpec, StepInput, batch_time, scalar

Array = Any


def ddim_update(x0: Array, eps: Array, alpha_t: Array, sigma_t: Array, c: Array,
                noise: Array) -> Array:
  """alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z (Song et al. 2021, eq. 12); the direction
  coefficient is clamped at 0 (it would be imaginary only for eta > 1)."""
  direction = jnp.sqrt(jnp.maximum(sigma_t**2 - c**2, 0.0))
  return alpha_t * x0 + direction * eps + c * noise


def ddim_step(denoiser: Any, x: Array, state: Array, inp: StepInput, key: Array,
              opts: Mapping[str, Any]) -> tuple[Array, Array]:
  """One generalized step from s to t (module docstring)."""
  s, t = inp.s, inp.t
  out = denoiser(x, batch_time(s.t, x))
  posterior = scalar(t.sigma, x) ** 2 * scalar(inp.transition_variance, x) / scalar(
      s.sigma, x) ** 2
  c = jnp.asarray(opts["eta"], x.dtype) * jnp.sqrt(posterior)
  noise = jax.random.normal(key, x.shape, x.dtype)
  return ddim_update(out.x0, out.eps, scalar(t.alpha, x), scalar(t.sigma, x), c, noise), state


def ddim_inverse_step(denoiser: Any, x: Array, inp: StepInput, *,
                      fixed_point_iterations: int) -> Array:
  """Inverts the eta = 0 step from s to t: maps x at t to x at s.

  Solving eq. 12 (c = 0) for its input gives x_s = alpha_s x0 + sigma_s eps with
  x0 = (x_t - sigma_t eps) / alpha_t and eps = eps_theta(x_s, s), which depends on the
  unknown output. The first guess evaluates eps at the current state (the reverse Euler step
  of the DDIM ODE, Song et al. 2021, Sec. 4.3, eq. 14); each fixed-point iteration
  re-evaluates eps at the latest guess.
  """
  s, t = inp.s, inp.t
  time = batch_time(s.t, x)

  def solve(_: Any, guess: Array) -> Array:
    eps = denoiser(guess, time).eps
    x0 = (x - scalar(t.sigma, x) * eps) / scalar(t.alpha, x)
    return scalar(s.alpha, x) * x0 + scalar(s.sigma, x) * eps

  return jax.lax.fori_loop(0, fixed_point_iterations + 1, solve, x)


def check_eta(process: Any, opts: Mapping[str, Any], num_steps: int) -> None:
  """Raises ValueError unless eta >= 0."""
  del process, num_steps
  if "eta" in opts and not float(opts["eta"]) >= 0.0:
    raise ValueError(f"eta must be >= 0 (0 = deterministic DDIM, 1 = DDPM-like), got "
                     f"{float(opts['eta'])!r}")


DDIM = SamplerSpec(
    name="ddim", step=ddim_step, options={"eta": 0.0}, default_steps=50,
    continuous_steps=50, stochastic=True, noise_option="eta", validate=check_eta,
    summary="DDIM, Song et al. 2021 eq. 12 (eta = 0 deterministic, 1 DDPM-like)")
