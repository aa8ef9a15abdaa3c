"""Running a sampler's step function over its whole chain as one ``jax.lax.scan``."""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Array = Any


def check_stride(trajectory_stride: int) -> int:
  """Raises ValueError unless ``trajectory_stride`` is an int >= 1."""
  if isinstance(trajectory_stride, bool) or not isinstance(trajectory_stride, int) \
      or trajectory_stride < 1:
    raise ValueError(f"trajectory_stride must be an int >= 1, got {trajectory_stride!r}")
  return trajectory_stride


def run_chain(step_fn: Callable[[Array, Any], Array], x_init: Array, xs: Any, *,
              trajectory_stride: Optional[int] = None) -> Array | tuple[Array, Array]:
  """Applies ``x <- step_fn(x, xs[n])`` for n = 0, 1, ..., L-1 in one ``lax.scan``.

  Args:
    step_fn: one sampler step.
    x_init: the starting state.
    xs: per-step inputs, a pytree of arrays with leading axis L.
    trajectory_stride: None to return only the final state; k to also return the
      trajectory ``[1 + ceil(L / k), *x.shape]``: ``x_init``, the state after every k-th
      step, and the final state. It is written in place into a buffer carried by the
      scan, so memory is that of the kept states only.
  """
  if trajectory_stride is None:
    x, _ = jax.lax.scan(lambda x, inp: (step_fn(x, inp), None), x_init, xs)
    return x
  length = jax.tree_util.tree_leaves(xs)[0].shape[0]
  num_frames = 1 + -(-length // trajectory_stride)
  frames = jnp.zeros((num_frames,) + x_init.shape, x_init.dtype).at[0].set(x_init)

  def body(carry: tuple[Array, Array], inp: tuple[Array, Any]) -> tuple[tuple[Array, Array], None]:
    x, frames = carry
    n, step_inputs = inp
    x = step_fn(x, step_inputs)
    # Step n + 1 lands in frame ceil((n + 1) / k); a frame's last write is step k * frame.
    frame = (n + trajectory_stride) // trajectory_stride
    return (x, jax.lax.dynamic_update_index_in_dim(frames, x, frame, axis=0)), None

  (x, frames), _ = jax.lax.scan(body, (x_init, frames), (jnp.arange(length), xs))
  return x, frames
