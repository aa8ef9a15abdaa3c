"""Power-function EMA and its post-hoc reconstruction (Karras, Aittala, Lehtinen, Hellsten, Aila
& Laine 2024, "Analyzing and improving the training dynamics of diffusion models", Sec. 3 and
App. C).

A power-function EMA of the parameters theta(tau) averages them with the profile

    theta_hat_gamma(t) = int_0^t p_{gamma,t}(tau) theta(tau) dtau,
    p_{gamma,t}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1)              (0 < tau <= t),

whose width relative to the training time is sigma_rel = (gamma + 1)^(1/2) (gamma + 2)^-1
(gamma + 3)^(-1/2) (Sec. 3.1). After t optimizer steps it is the EMA

    theta_hat <- beta_t theta_hat + (1 - beta_t) theta_t,   beta_t = (1 - 1 / t)^(gamma + 1),

which weights step k's parameters by (k^(gamma+1) - (k-1)^(gamma+1)) / t^(gamma+1): exactly the
profile integrated over (k - 1, k], i.e. the continuous profile of the piecewise-constant
trajectory theta(tau) = theta_k on (k - 1, k] (`profile_weights`).

Post-hoc reconstruction (Sec. 3.2, App. C.2): snapshots theta_hat_i of profiles (gamma_i, t_i)
are saved during training; the EMA of any other profile (gamma_r, t_r) is approximated by
sum_i x_i theta_hat_i with the x minimizing the L2 distance || sum_i x_i p_i - p_r || of the
profiles, the least-squares problem A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_r> and
<p_{a,s}, p_{b,u}> = (a + 1)(b + 1) min(s, u)^(a + b + 1) / ((a + b + 1) s^(a+1) u^(b+1)).
The relative error || sum_i x_i p_i - p_r || / || p_r || is reported with the weights.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any

# sigma_rel(gamma) rises from 0 at gamma = -1 to its maximum at gamma = (sqrt(5) - 3) / 2 and
# falls to 0 as gamma -> infinity; a profile of sigma_rel in (0, SIGMA_REL_MAX) is the gamma
# of the falling branch.
GAMMA_AT_MAX = (np.sqrt(5.0) - 3.0) / 2.0


def gamma_to_sigma_rel(gamma: float) -> float:
  """sigma_rel = (gamma + 1)^(1/2) / ((gamma + 2) (gamma + 3)^(1/2)) (Sec. 3.1)."""
  gamma = float(gamma)
  return float(np.sqrt(gamma + 1.0) / ((gamma + 2.0) * np.sqrt(gamma + 3.0)))


SIGMA_REL_MAX = gamma_to_sigma_rel(GAMMA_AT_MAX)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """The exponent gamma >= (sqrt(5) - 3) / 2 of the profile with this sigma_rel: the largest
  real root of (gamma + 2)^2 (gamma + 3) sigma_rel^2 = gamma + 1 (App. C).

  Raises:
    ValueError: unless 0 < sigma_rel < SIGMA_REL_MAX (= 0.3003).
  """
  value = float(sigma_rel)
  if not 0.0 < value < SIGMA_REL_MAX:
    raise ValueError(f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}) (the range of the "
                     f"power-function EMA profiles), got {sigma_rel}")
  inv = 1.0 / value**2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return float(np.max(roots[np.abs(roots.imag) < 1e-9 * np.abs(roots).max()].real))


def power_ema_beta(step: Array, gamma: float) -> Array:
  """beta_t = (1 - 1 / t)^(gamma + 1) after the t-th update (t >= 1; beta_1 = 0)."""
  t = jnp.asarray(step, jnp.result_type(float))
  return jnp.exp((gamma + 1.0) * jnp.log1p(-1.0 / t))


def power_ema_update(emas: Sequence[Any], params: Any, *, step: Array,
                     gammas: Sequence[float]) -> tuple[Any, ...]:
  """Each tracked EMA after the ``step``-th update, with ``params`` the parameters after it."""
  updated = []
  for ema, gamma in zip(emas, gammas):
    beta = power_ema_beta(step, gamma)
    updated.append(jax.tree.map(lambda e, p, b=beta: (b * e + (1.0 - b) * p).astype(e.dtype),
                                ema, params))
  return tuple(updated)


def profile_weights(step: int, gamma: float) -> np.ndarray:
  """The weights [step] of theta_1, ..., theta_step in the EMA after ``step`` updates
  (module docstring), float64."""
  k = np.arange(1, step + 1, dtype=np.float64)
  return (k / step) ** (gamma + 1.0) - ((k - 1.0) / step) ** (gamma + 1.0)


def profile_inner_products(steps_a: Array, gammas_a: Array, steps_b: Array,
                           gammas_b: Array) -> np.ndarray:
  """<p_{a,s}, p_{b,u}> of the power profiles (module docstring), broadcast, float64, computed
  in logs so that large gammas and steps do not overflow."""
  s, a = np.asarray(steps_a, np.float64), np.asarray(gammas_a, np.float64)
  u, b = np.asarray(steps_b, np.float64), np.asarray(gammas_b, np.float64)
  total = a + b + 1.0
  log = total * np.log(np.minimum(s, u)) - (a + 1.0) * np.log(s) - (b + 1.0) * np.log(u)
  return (a + 1.0) * (b + 1.0) / total * np.exp(log)


def solve_weights(steps: Sequence[int], gammas: Sequence[float], target_step: int,
                  target_gamma: float) -> tuple[np.ndarray, float]:
  """(x, relative error): the least-squares weights of the snapshots (steps[i], gammas[i]) whose
  combination best matches the profile (target_gamma, target_step) (module docstring)."""
  steps, gammas = np.asarray(steps, np.float64), np.asarray(gammas, np.float64)
  gram = profile_inner_products(steps[:, None], gammas[:, None], steps[None], gammas[None])
  rhs = profile_inner_products(steps, gammas, target_step, target_gamma)
  weights = np.linalg.lstsq(gram, rhs, rcond=None)[0]
  norm2 = float(profile_inner_products(target_step, target_gamma, target_step, target_gamma))
  residual2 = float(weights @ gram @ weights - 2.0 * weights @ rhs + norm2)
  return weights, float(np.sqrt(max(residual2, 0.0) / norm2))

