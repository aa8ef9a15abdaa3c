"""Input checks every sampler shares, run in Python before anything compiles.

Each raises a ValueError whose one line names the bad value and what is expected. Values
that are traced (inside a caller's jit) are checked for what their shapes say only.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import denoisers
from jaxdiff.samplers import grids

Array = Any


def check_shape(shape: Sequence[int]) -> tuple[int, ...]:
  """Raises ValueError unless ``shape`` is a batch-first shape of positive ints."""
  try:
    shape = tuple(int(s) for s in shape)
  except TypeError:
    raise ValueError(f"shape must be a sequence of ints, got {shape!r}") from None
  if len(shape) < 2 or min(shape) < 1:
    raise ValueError(f"shape must be [B, ...] with at least 2 positive dims, got {shape}")
  return shape


def check_array(name: str, x: Optional[Array], shape: tuple[int, ...]) -> None:
  """Raises ValueError if ``x`` is given and its shape is not ``shape``."""
  if x is not None and tuple(jnp.shape(x)) != shape:
    raise ValueError(f"{name} has shape {tuple(jnp.shape(x))}, expected {shape}")


def check_key(rng: Any) -> None:
  """Raises ValueError unless ``rng`` is a jax.random key (raw uint32[2] or typed)."""
  if not isinstance(rng, (jax.Array, np.ndarray)):
    raise ValueError(f"rng must be a jax.random key, got {type(rng).__name__}")


def check_positive_int(name: str, value: Any) -> int:
  """Raises ValueError unless ``value`` is an int >= 1."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  return int(value)


def check_denoiser(denoiser: Any) -> None:
  """Raises ValueError unless ``denoiser`` is a denoiser (it has a process and is callable)."""
  if not callable(denoiser) or not hasattr(denoiser, "process"):
    raise ValueError(f"expected a denoiser (jaxdiff.denoisers.make_denoiser(model_fn, "
                     f"process, prediction=...)), got {type(denoiser).__name__}")


def split_options(name: str, defaults: Mapping[str, Any],
                  given: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], dict]:
  """The sampler's options with ``given`` over its defaults, split into the static part
  (strings, ints, bools, None: hashable) and the traced part (floats, arrays, callables).

  Raises:
    ValueError: on an option the sampler does not have, or a float option given a
      non-number.
  """
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"sampler {name!r} has no option(s) {unknown}; its options are "
                     f"{sorted(defaults) or 'none'}")
  static, traced = [], {}
  for key, default in {**defaults, **given}.items():
    value = given.get(key, default)
    if isinstance(defaults[key], float):
      if isinstance(value, (bool, str)) or not isinstance(value, (int, float, np.number,
                                                                  jax.Array, np.ndarray)):
        raise ValueError(f"option {key}={value!r} of sampler {name!r} must be a number")
      traced[key] = jnp.asarray(value, jnp.result_type(float))
    elif callable(value):
      traced[key] = denoisers.traceable(value, name=key)
    else:
      static.append((key, value))
  return tuple(static), traced


def concrete_float(value: Any) -> Optional[float]:
  """``value`` as a float when it is concrete, else None."""
  return float(np.asarray(value)) if grids.is_concrete(value) else None
