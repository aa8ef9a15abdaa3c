"""Passing user callables (model_fn, cond_fn, denoised_fn) through ``jax.jit``.

A sampler's callables are split like pytrees: array leaves (e.g. the params of a
``jax.tree_util.Partial(apply_fn, params)``) become traced arguments, every other leaf
(the function itself, Python numbers, strings) is static and part of the compilation
cache key. Functions are compared by identity, so

- a function defined once, or a ``jax.tree_util.Partial`` of it rebuilt each call with
  new arrays, reuses the compiled sampler;
- a new lambda, closure or ``functools.partial`` per call is a new key: it recompiles, and
  the arrays it closes over are baked into the program as constants.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


@jax.tree_util.register_pytree_node_class
class Traceable:
  """A callable carried through ``jax.jit`` as a pytree: array leaves traced, rest static."""

  def __init__(self, fn: Callable[..., Any]):
    self.fn = fn

  def tree_flatten(self) -> tuple[list[Any], tuple[Any, ...]]:
    leaves, treedef = jax.tree_util.tree_flatten(self.fn)
    is_array = tuple(_is_array(leaf) for leaf in leaves)
    arrays = [leaf for leaf, a in zip(leaves, is_array) if a]
    statics = tuple(None if a else leaf for leaf, a in zip(leaves, is_array))
    return arrays, (treedef, is_array, statics)

  @classmethod
  def tree_unflatten(cls, aux: tuple[Any, ...], arrays: list[Any]) -> "Traceable":
    treedef, is_array, statics = aux
    it = iter(arrays)
    leaves = [next(it) if a else s for a, s in zip(is_array, statics)]
    return cls(jax.tree_util.tree_unflatten(treedef, leaves))


def traceable(fn: Optional[Callable[..., Any]], *, name: str,
              optional: bool = False) -> Optional[Traceable]:
  """Wraps ``fn`` for a jitted sampler, checking it is callable and its static part hashable.

  Raises:
    ValueError: if ``fn`` is not callable (or None where ``optional`` allows it), or a
      non-array leaf of it cannot be hashed (jit needs it as a cache key).
  """
  if fn is None and optional:
    return None
  if not callable(fn):
    raise ValueError(f"{name} must be callable, got {type(fn).__name__}: {fn!r}")
  wrapped = Traceable(fn)
  _, aux = wrapped.tree_flatten()
  try:
    hash(aux)
  except TypeError as e:
    raise ValueError(
        f"{name} has a non-array part that cannot be hashed ({e}); pass arrays as leaves "
        "of a jax.tree_util.Partial, or use a hashable callable") from None
  return wrapped


def unwrap(wrapped: Optional[Traceable]) -> Optional[Callable[..., Any]]:
  """The callable inside a :class:`Traceable` (None stays None)."""
  return None if wrapped is None else wrapped.fn
