"""Masked diffusion in continuous time: MD4 (Shi et al. 2024) and MDLM (Sahoo et al. 2024).

Each of the D positions of x_0 (tokens in [0, K)) is independently replaced by the mask
token m = K by time t in [0, 1] with probability 1 - alpha(t), alpha(0) = 1, alpha(1) = 0:
q(x_t^n | x_0^n) = alpha_t [x_t^n = x_0^n] + (1 - alpha_t) [x_t^n = m]. A model
``model_fn(x_t, t) -> logits [B, ..., K]`` (x_t int32 tokens in [0, K], t float [B]) predicts
x_0 at the masked positions; unmasked positions are copied. The negative ELBO (MD4 eq. 4,
MDLM eq. 10) is a weighted cross-entropy over the masked positions,

    L_inf = int_0^1 -alpha'(t) / (1 - alpha(t)) E_q[ sum_{n: x_t^n = m} -log mu(x_t, t)_n[x_0^n] ] dt,

its reconstruction and prior terms vanishing since alpha(0) = 1 and alpha(1) = 0. With T
steps t(i) = i / T, s(i) = (i - 1) / T the discrete-time bound (MD4 eq. 3-5) has weights
(alpha_s - alpha_t) / (1 - alpha_t) in place of -alpha'(t) dt / (1 - alpha_t) and tends to
L_inf as T grows; it equals the D3PM bound of the absorbing kernel with
beta_i = 1 - alpha_{t(i)} / alpha_{s(i)} (`jaxdiff.discrete.losses`). Units: bits/dim.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from jaxdiff.discrete import checks
from jaxdiff.discrete.losses import categorical_log_likelihood

Array = Any
ModelFn = Callable[[Array, Array], Array]

MASKING_SCHEDULES = ("linear", "cosine", "poly")


@flax.struct.dataclass
class MaskingSchedule:
  """alpha(t), the probability that a position is still unmasked at time t (MD4 Table 4):
  "linear" 1 - t, "cosine" 1 - cos(pi/2 (1 - t)) (computed as 1 - sin(pi t / 2), exact at
  both ends), "poly" 1 - t^w (w = ``exponent``)."""

  exponent: Array
  kind: str = flax.struct.field(pytree_node=False, default="linear")

  def alpha(self, t: Array) -> Array:
    if self.kind == "cosine":
      return 1.0 - jnp.sin(0.5 * math.pi * t)
    return 1.0 - t ** (self.exponent if self.kind == "poly" else 1.0)

  def dalpha(self, t: Array) -> Array:
    """d alpha / dt."""
    if self.kind == "cosine":
      return -0.5 * math.pi * jnp.cos(0.5 * math.pi * t)
    w = self.exponent if self.kind == "poly" else 1.0
    return -w * t ** (w - 1.0)

  def weight(self, t: Array) -> Array:
    """The ELBO's weight -alpha'(t) / (1 - alpha(t)) (0 at t = 0, where nothing is masked)."""
    safe = jnp.where(t > 0, t, 1.0)
    return jnp.where(t > 0, -self.dalpha(safe) / (1.0 - self.alpha(safe)), 0.0)

  def discrete_weight(self, s: Array, t: Array) -> Array:
    """(alpha_s - alpha_t) / (1 - alpha_t), the probability that a position masked at t is
    unmasked at s < t (MD4 eq. 3)."""
    return (self.alpha(s) - self.alpha(t)) / (1.0 - self.alpha(t))


def make_masking_schedule(kind: str = "linear", *, exponent: float = 1.0) -> MaskingSchedule:
  """A `MaskingSchedule`; raises ValueError on an unknown kind or exponent <= 0."""
  if kind not in MASKING_SCHEDULES:
    raise ValueError(f"unknown masking schedule {kind!r}; expected one of {MASKING_SCHEDULES}")
  if not exponent > 0:
    raise ValueError(f"exponent must be > 0, got {exponent!r}")
  return MaskingSchedule(exponent=jnp.asarray(exponent, jnp.result_type(float)), kind=kind)


def mask_tokens(schedule: MaskingSchedule, x0: Array, t: Array, key: Array, *,
                num_classes: int) -> Array:
  """A draw x_t ~ q(x_t | x_0): each position masked (token K) with probability
  1 - alpha(t), t [B]."""
  alpha = jnp.reshape(schedule.alpha(t), t.shape + (1,) * (x0.ndim - 1))
  keep = jax.random.uniform(key, x0.shape, dtype=alpha.dtype) < alpha
  return jnp.where(keep, x0, num_classes).astype(jnp.int32)


def masked_cross_entropy(logits: Array, x0: Array, x_t: Array, *, num_classes: int) -> Array:
  """[B] nats: sum over the masked positions of -log mu(x_t)[x_0] (logits [B, ..., K])."""
  nll = -categorical_log_likelihood(x0, logits)
  masked = x_t == num_classes
  return jnp.sum(jnp.where(masked, nll, 0.0), axis=tuple(range(1, x0.ndim)))


def _elbo_term(model_fn: ModelFn, schedule: MaskingSchedule, x0: Array, t: Array,
               weight: Array, key: Array, num_classes: int) -> Array:
  """weight * (masked cross-entropy at one draw of x_t) in bits/dim, [B]."""
  x_t = mask_tokens(schedule, x0, t, key, num_classes=num_classes)
  ce = masked_cross_entropy(model_fn(x_t, t), x0, x_t, num_classes=num_classes)
  dims = math.prod(x0.shape[1:])
  return jnp.where(weight > 0, weight * ce, 0.0) / (dims * math.log(2.0))


def _check(model_fn: ModelFn, x0: Array, num_classes: int) -> None:
  checks.check_tokens("x0", x0, num_classes)
  checks.check_logits(model_fn, jnp.shape(x0), jnp.result_type(float), num_classes)


def masked_loss(model_fn: ModelFn, schedule: MaskingSchedule, x0: Array, rng: Array, *,
                num_classes: int, num_steps: Optional[int] = None,
                antithetic: bool = True) -> Array:
  """Per-example Monte Carlo estimate [B] of the negative ELBO in bits/dim.

  ``num_steps=None``: the continuous-time L_inf at one t ~ U[0, 1) per example
  (``antithetic``: the batch's times are u + i / B mod 1, stratified as in MD4 / VDM);
  ``num_steps=T``: the T-step discrete bound, at i ~ U{1..T}, T * (alpha_s - alpha_t) /
  (1 - alpha_t) * CE. Raises ValueError (before compiling) on tokens out of [0, K) or logits
  of the wrong K.
  """
  _check(model_fn, x0, num_classes)
  t_key, x_key = jax.random.split(rng)
  batch = x0.shape[0]
  dtype = jnp.result_type(float)
  if num_steps is None:
    u = jax.random.uniform(t_key, (1,) if antithetic else (batch,), dtype)
    t = jnp.mod(u + jnp.arange(batch, dtype=dtype) / batch, 1.0) if antithetic else u
    weight = schedule.weight(t)
  else:
    steps = jax.random.randint(t_key, (batch,), 1, num_steps + 1).astype(dtype)
    t = steps / num_steps
    weight = num_steps * schedule.discrete_weight((steps - 1) / num_steps, t)
  return _elbo_term(model_fn, schedule, x0, t, weight, x_key, num_classes)


def masked_bpd(model_fn: ModelFn, schedule: MaskingSchedule, x0: Array, rng: Array, *,
               num_classes: int, num_points: int = 128) -> dict[str, Array]:
  """A stratified estimate of L_inf for each example of x0, in bits/dim, for evaluation:
  t_j = (j + u) / n for j < n = ``num_points`` (u ~ U[0, 1) per example), one draw of x_t
  each, in one ``lax.map``. Returns {"total_bpd": [B], "prior_bpd": [B] (zero: alpha(1) =
  0), "vb": [B, n]} with column j the weighted term of t_j divided by n."""
  _check(model_fn, x0, num_classes)
  u_key, x_key = jax.random.split(rng)
  u = jax.random.uniform(u_key, x0.shape[:1], jnp.result_type(float))

  def term(j: Array) -> Array:
    t = (j + u) / num_points
    return _elbo_term(model_fn, schedule, x0, t, schedule.weight(t),
                      jax.random.fold_in(x_key, j), num_classes) / num_points

  vb = jax.lax.map(term, jnp.arange(num_points)).T
  return {"total_bpd": jnp.sum(vb, axis=1), "prior_bpd": jnp.zeros_like(u), "vb": vb}
