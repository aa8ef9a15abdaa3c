"""Input checks of the categorical chains, run in Python before anything compiles.

Each raises a ValueError whose one line names the bad value and what is expected. Traced
values (inside a caller's jit) are checked for what their shapes and dtypes say only.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.grids import is_concrete

Array = Any


def check_tokens(name: str, x: Array, num_classes: int) -> None:
  """Raises ValueError unless ``x`` is an integer array [B, ...] of tokens in [0, K)."""
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.integer) or jnp.ndim(x) < 2:
    raise ValueError(f"{name} must be integer tokens [B, ...] (at least 2 dims), got "
                     f"{dtype} {tuple(jnp.shape(x))}")
  if is_concrete(x):
    values = np.asarray(x)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
      bad = low if low < 0 else high
      raise ValueError(f"{name} holds token {bad}, out of range for K={num_classes} "
                       f"categories (expected 0..{num_classes - 1})")


def check_logits(model_fn: Callable[..., Array], shape: tuple[int, ...], t_dtype: Any,
                 num_classes: int) -> None:
  """Raises ValueError unless ``model_fn(x_t, t)`` returns logits ``shape + (K,)`` for
  tokens x_t of ``shape``, judged from shapes alone (jax.eval_shape: nothing runs)."""
  shape = tuple(shape)
  x_spec = jax.ShapeDtypeStruct(shape, jnp.int32)
  t_spec = jax.ShapeDtypeStruct(shape[:1], t_dtype)
  out = jax.eval_shape(model_fn, x_spec, t_spec)
  if tuple(out.shape) != shape + (num_classes,):
    raise ValueError(f"model_fn must return logits over K={num_classes} categories shaped "
                     f"{shape + (num_classes,)}, got {tuple(out.shape)}")
