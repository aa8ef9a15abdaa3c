"""The forward marginals, posteriors and the x0-parameterized reverse of a D3PM chain.

Austin et al. 2021, Sec. 3: q(x_t | x_0) = Cat(x_0 Qbar_t) (eq. 2); the posterior

    q(x_{t-1} | x_t, x_0) = Cat(x_{t-1}; p proportional to (x_t Q_t^T) * (x_0 Qbar_{t-1}))

(eq. 3, elementwise product), and the reverse model in the x0-parameterization (eq. 4): a
network predicts logits of p~(x_0 | x_t) and

    p(x_{t-1} | x_t) proportional to sum_{x0} q(x_{t-1}, x_t | x0) p~(x0 | x_t)
                   = (x_t Q_t^T) * (p~ Qbar_{t-1}),

the posterior with the predicted distribution of x_0 in place of the one-hot x_0. At t = 0
(the last reverse step) both are the distribution of x_0 itself. Everything works on
per-position log-probabilities [B, ..., K] (tokens [B, ...], timesteps t [B]), in log space
for the structured kernels (`jaxdiff.discrete.kernels`), so no K x K matrix is built per
position and long chains stay exact.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.discrete.kernels import Kernel, log_cumulative, log_onestep_column

Array = Any


def onehot_log_probs(x: Array, num_classes: int, dtype: Any = None) -> Array:
  """log of the one-hot rows of tokens x [B, ...]: 0 at x, -inf elsewhere, [B, ..., K]."""
  dtype = jnp.result_type(float) if dtype is None else dtype
  return jnp.where(jax.nn.one_hot(x, num_classes, dtype=bool), 0.0, -jnp.inf).astype(dtype)


def q_log_probs(kernel: Kernel, x0: Array, t: Array) -> Array:
  """log q(x_t | x_0) [B, ..., K] for tokens x0 [B, ...] and timesteps t [B] (eq. 2)."""
  return log_cumulative(kernel, onehot_log_probs(x0, kernel.num_classes,
                                                 kernel.betas.dtype), t)


def q_sample(kernel: Kernel, x0: Array, t: Array, key: Array) -> Array:
  """A draw x_t ~ q(x_t | x_0) (int32 tokens shaped like x0), by the Gumbel-max trick."""
  return jax.random.categorical(key, q_log_probs(kernel, x0, t), axis=-1).astype(jnp.int32)


def _broadcast_t(t: Array, x: Array) -> Array:
  return jnp.reshape(t, jnp.shape(t) + (1,) * (x.ndim - 1))


def q_posterior_logits(kernel: Kernel, x0_log_probs: Array, x_t: Array, t: Array) -> Array:
  """Unnormalized log q(x_{t-1} | x_t, x_0) [B, ..., K] (eq. 3), x_0 given as log-weights.

  With a one-hot x_0 (`onehot_log_probs`) this is the true posterior; with the log-softmax
  of predicted x_0 logits it is the x0-parameterized reverse model (eq. 4, `p_logits`). At
  t = 0 it returns ``x0_log_probs`` (the reverse chain ends in x_0).
  """
  fact1 = log_onestep_column(kernel, x_t, t).astype(x0_log_probs.dtype)
  fact2 = log_cumulative(kernel, x0_log_probs, jnp.maximum(t - 1, 0))
  return jnp.where(_broadcast_t(t, x0_log_probs) == 0, x0_log_probs, fact1 + fact2)


def p_logits(kernel: Kernel, model_logits: Array, x_t: Array, t: Array) -> Array:
  """Unnormalized log p(x_{t-1} | x_t) [B, ..., K] of a model predicting x_0 logits
  [B, ..., K] (eq. 4); at t = 0, the normalized prediction of x_0."""
  return q_posterior_logits(kernel, jax.nn.log_softmax(model_logits, axis=-1), x_t, t)
