"""Input and configuration checks that jaxdiff's denoisers share (one-line ValueErrors)."""

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike


def compute_dtype(dtype: DTypeLike) -> jnp.dtype:
  """``dtype`` as a floating NumPy dtype, or a ``ValueError`` naming it."""
  try:
    result = jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"dtype must name a float dtype, got {dtype!r}") from e
  if not jnp.issubdtype(result, jnp.floating):
    raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")
  return result


def check_times_and_labels(t: jax.Array, y: jax.Array | None, *, batch: int,
                           num_classes: int | None) -> None:
  """``t`` of shape ``[B]``; ``y`` None or ``[B]``, and only for a class-conditional model."""
  if jnp.shape(t) != (batch,):
    raise ValueError(f"t must have shape [B] = ({batch},), got {jnp.shape(t)}")
  if y is not None:
    if num_classes is None:
      raise ValueError("y was given but the model has num_classes=None")
    if jnp.shape(y) != (batch,):
      raise ValueError(f"y must have shape [B] = ({batch},), got {jnp.shape(y)}")
