"""The variational bound and the hybrid loss of D3PM (Austin et al. 2021, Sec. 3.3 and 3.4).

The negative ELBO of x_0 is L_T + sum_{t >= 1} L_{t-1} + L_0 with (0-indexed steps)

    L_T     = KL(q(x_T | x_0) || p(x_T))                         (`prior_bpd`)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))    at step t >= 1
    L_0     = -log p(x_0 | x_1)                                at step t = 0

(`vb_terms_bpd`), p(x_T) being the kernel's stationary distribution. The hybrid loss is
L_vb + lambda * E_q[-log p~(x_0 | x_t)] (eq. 5; lambda = 0.001 for their images). Units:
bits per dimension (nats averaged over every non-batch axis, divided by log 2), as the
Gaussian `jaxdiff.losses`. A model is ``model_fn(x_t, t) -> logits [B, ..., K]`` of x_0,
x_t int32 tokens [B, ...] and t int32 [B].
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxdiff.discrete import checks
from jaxdiff.discrete.kernels import Kernel, log_cumulative, stationary_log_probs
from jaxdiff.discrete.posterior import onehot_log_probs, p_logits, q_posterior_logits, q_sample
from jaxdiff.losses import mean_flat

Array = Any
ModelFn = Callable[[Array, Array], Array]

D3PM_LOSS_TYPES = ("hybrid", "kl", "ce")


def categorical_kl(logits_q: Array, logits_p: Array) -> Array:
  """KL(Cat(softmax(logits_q)) || Cat(softmax(logits_p))) over the last axis, in nats;
  states of zero probability under q contribute nothing."""
  log_q = jax.nn.log_softmax(logits_q, axis=-1)
  log_p = jax.nn.log_softmax(logits_p, axis=-1)
  terms = jnp.where(log_q > -jnp.inf, jnp.exp(log_q) * (log_q - log_p), 0.0)
  return jnp.sum(terms, axis=-1)


def categorical_log_likelihood(x: Array, logits: Array) -> Array:
  """log Cat(x; softmax(logits)) per position [B, ...] for tokens x [B, ...]."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, x[..., None], axis=-1)[..., 0]


def _bits(nats: Array) -> Array:
  return mean_flat(nats) / math.log(2.0)


def vb_terms_bpd(kernel: Kernel, model_logits: Array, x0: Array, x_t: Array,
                 t: Array) -> Array:
  """[B] bits/dim of the bound's term at step t: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} |
  x_t)) for t >= 1 and the decoder's -log p(x_0 | x_1) for t = 0 (module docstring)."""
  true_logits = q_posterior_logits(kernel, onehot_log_probs(x0, kernel.num_classes,
                                                            model_logits.dtype), x_t, t)
  pred_logits = p_logits(kernel, model_logits, x_t, t)
  kl = _bits(categorical_kl(true_logits, pred_logits))
  nll = -_bits(categorical_log_likelihood(x0, pred_logits))
  return jnp.where(t == 0, nll, kl)


def prior_bpd(kernel: Kernel, x0: Array) -> Array:
  """[B] bits/dim of KL(q(x_T | x_0) || p(x_T)), p(x_T) the stationary distribution."""
  last = jnp.full(x0.shape[:1], kernel.num_timesteps - 1)
  log_q = log_cumulative(kernel, onehot_log_probs(x0, kernel.num_classes,
                                                  kernel.betas.dtype), last)
  prior = jnp.broadcast_to(stationary_log_probs(kernel), log_q.shape)
  return _bits(categorical_kl(log_q, prior))


def cross_entropy_bpd(model_logits: Array, x0: Array) -> Array:
  """[B] bits/dim of -log p~(x_0 | x_t), the auxiliary term of the hybrid loss."""
  return -_bits(categorical_log_likelihood(x0, model_logits))


def _check(model_fn: ModelFn, kernel: Kernel, x0: Array) -> None:
  checks.check_tokens("x0", x0, kernel.num_classes)
  checks.check_logits(model_fn, jnp.shape(x0), jnp.int32, kernel.num_classes)


def d3pm_loss(model_fn: ModelFn, kernel: Kernel, x0: Array, rng: Array, *,
              loss_type: str = "hybrid", hybrid_coeff: float = 0.001) -> Array:
  """Per-example training loss [B] at one uniform step t per example (Austin et al. 2021):
  "hybrid" L_{t-1} + hybrid_coeff * CE (eq. 5), "kl" the bound's term L_{t-1} alone, "ce"
  the cross-entropy -log p~(x_0 | x_t) alone; bits/dim. Raises ValueError (before
  compiling) on an unknown loss_type, tokens out of range or logits of the wrong K."""
  if loss_type not in D3PM_LOSS_TYPES:
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {D3PM_LOSS_TYPES}")
  _check(model_fn, kernel, x0)
  t_key, x_key = jax.random.split(rng)
  t = jax.random.randint(t_key, x0.shape[:1], 0, kernel.num_timesteps)
  x_t = q_sample(kernel, x0, t, x_key)
  logits = model_fn(x_t, t)
  ce = cross_entropy_bpd(logits, x0)
  if loss_type == "ce":
    return ce
  vb = vb_terms_bpd(kernel, logits, x0, x_t, t)
  return vb if loss_type == "kl" else vb + hybrid_coeff * ce


def calc_bpd(model_fn: ModelFn, kernel: Kernel, x0: Array, rng: Array) -> dict[str, Array]:
  """The whole bound of x0 [B, ...] in bits/dim, every step in one ``lax.map`` (a scan).

  Returns {"total_bpd": [B], "prior_bpd": [B], "vb": [B, T]} with column t the term of step
  t (one draw of x_t ~ q(x_t | x_0) per step, key ``fold_in(rng, t)``); total = prior + sum
  of vb. Raises ValueError on tokens out of range or logits of the wrong K (before
  compiling).
  """
  _check(model_fn, kernel, x0)
  batch = x0.shape[:1]

  def term(t_scalar: Array) -> Array:
    t = jnp.full(batch, t_scalar, jnp.int32)
    x_t = q_sample(kernel, x0, t, jax.random.fold_in(rng, t_scalar))
    return vb_terms_bpd(kernel, model_fn(x_t, t), x0, x_t, t)

  vb = jax.lax.map(term, jnp.arange(kernel.num_timesteps)).T
  prior = prior_bpd(kernel, x0)
  return {"total_bpd": prior + jnp.sum(vb, axis=1), "prior_bpd": prior, "vb": vb}
