"""Guidance: classifier-free (Ho & Salimans 2022) and classifier (Dhariwal & Nichol 2021).

Both wrappers return ``jax.tree_util.Partial`` objects, so their arrays (labels, guidance
scale) are traced arguments of a jitted sampler: sweeping ``y`` or ``scale`` with the same
shapes does not recompile.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Array = Any


def _guided_output(model_fn: Callable[[Array, Array, Array], Array], y: Array, scale: Array,
                   null_label: Array, guided_channels: Optional[int], x_t: Array,
                   t: Array) -> Array:
  batch = x_t.shape[0]
  if y.shape[0] != batch:
    raise ValueError(f"labels y have batch size {y.shape[0]}, but x_t has {batch}")
  null = jnp.broadcast_to(jnp.asarray(null_label, y.dtype), y.shape)
  out = model_fn(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                 jnp.concatenate([y, null]))
  cond, uncond = out[:batch], out[batch:]
  channels = cond.shape[-1] if guided_channels is None else guided_channels
  scale = scale.astype(cond.dtype)
  guided = (1.0 - scale) * uncond[..., :channels] + scale * cond[..., :channels]
  return jnp.concatenate([guided, cond[..., channels:]], axis=-1)


def classifier_free_guidance(model_fn: Callable[[Array, Array, Array], Array], y: Array,
                             scale: float | Array, null_label: int | Array, *,
                             guided_channels: Optional[int] = None
                             ) -> Callable[[Array, Array], Array]:
  """Classifier-free guidance, Ho & Salimans 2022, eq. 6.

  eps~(x_t, c) = (1 + w) eps(x_t, c) - w eps(x_t), written with the scale s = 1 + w as
  ``(1 - s) * eps_uncond + s * eps_cond``, which is exactly the unconditional output at
  s = 0 and exactly the conditional one at s = 1. The conditional and unconditional
  halves are one batched call of ``model_fn`` on ``[x_t; x_t]`` with labels ``[y; null]``.

  Args:
    model_fn: conditional model ``model_fn(x_t, t, y) -> output``.
    y: labels (or conditioning arrays) with the batch axis first.
    scale: guidance scale s (any real; > 1 strengthens the condition).
    null_label: the label (or array, broadcast to ``y``'s shape) that means "no
      condition", e.g. the extra class the model was trained with under label dropout.
    guided_channels: guide only the first this many output channels and take the rest
      from the conditional half (e.g. C for a learned-variance model's 2C outputs, as in
      GLIDE). None guides every channel.

  Returns:
    ``guided_fn(x_t, t)``, a ``jax.tree_util.Partial`` usable as any sampler's model_fn.

  Raises:
    ValueError: if model_fn is not callable, y has no batch axis, or guided_channels is
      not a positive int.
  """
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
  y = jnp.asarray(y)
  if y.ndim < 1:
    raise ValueError(f"y must have a batch axis, got a scalar of shape {y.shape}")
  if guided_channels is not None and (not isinstance(guided_channels, int)
                                      or guided_channels < 1):
    raise ValueError(f"guided_channels must be None or an int >= 1, got {guided_channels!r}")
  return jax.tree_util.Partial(_guided_output, model_fn, y, jnp.asarray(scale),
                               jnp.asarray(null_label), guided_channels)


def _scaled_grad(log_prob_fn: Callable[[Array, Array], Array], scale: Array, x_t: Array,
                 t: Array) -> Array:
  grad = jax.grad(lambda x: jnp.sum(log_prob_fn(x, t)))(x_t)
  return scale.astype(grad.dtype) * grad


def classifier_guidance(log_prob_fn: Callable[[Array, Array], Array],
                        scale: float | Array) -> Callable[[Array, Array], Array]:
  """The gradient term of classifier guidance, Dhariwal & Nichol 2021, Algorithms 1-2.

  Args:
    log_prob_fn: ``log_prob_fn(x_t, t) -> [B]``, log p(y | x_t, t) for the wanted labels
      (close over them, or use a ``jax.tree_util.Partial`` so they are traced); ``t`` is
      the original timestep of the schedule.
    scale: the gradient scale s.

  Returns:
    ``cond_fn(x_t, t) = s * grad_{x_t} log p(y | x_t, t)``: for any sampler through
    ``jaxdiff.denoisers.classifier_guidance(denoiser, cond_fn)`` (eps - sigma_t cond_fn,
    Algorithm 2), or for the ancestral sampler as its ``mean_shift_fn`` option (the mean
    moves by variance * cond_fn, Algorithm 1; ``samplers.ddpm(..., cond_fn=)``).
  """
  if not callable(log_prob_fn):
    raise ValueError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
  return jax.tree_util.Partial(_scaled_grad, log_prob_fn, jnp.asarray(scale))
