"""jaxdiff: denoising diffusion models in JAX and Flax.

The core math (``schedules``, ``diffusion``, ``losses``) is imported eagerly; the other
submodules are imported on first attribute access (``jaxdiff.samplers``, ...), so that
``import jaxdiff`` stays cheap.
"""

import importlib
from typing import Any

from jaxdiff import diffusion, losses, schedules

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("evaluation", "likelihood", "models", "samplers", "score_matching", "sde",
                    "sde_samplers", "training")

__all__ = ["diffusion", "losses", "schedules", *_LAZY_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"jaxdiff.{name}")
  raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
