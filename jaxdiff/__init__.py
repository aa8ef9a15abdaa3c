"""jaxdiff: denoising diffusion models in JAX and Flax.

Every submodule is imported on first attribute access (``jaxdiff.samplers``, ...), so that
``import jaxdiff`` (and importing a config file, which needs only ``jaxdiff.config.schema``)
stays cheap.

Layout by layer, imports pointing downward: the math (``schedules``, ``processes``,
``diffusion``, ``losses``, ``sde``, ``denoisers``, ``samplers``, ``score_matching``,
``likelihood``, ``testing``, ``evaluation``), the models (``models``), the data
(``data``), the configuration glue (``config``) and the training job (``job``).
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("config", "data", "denoisers", "diffusion", "evaluation", "images", "job",
                    "likelihood", "losses", "models", "parallel", "processes", "samplers",
                    "schedules", "score_matching", "sde", "sde_samplers", "testing")

__all__ = [*_LAZY_SUBMODULES, "__version__"]


def __getattr__(name: str) -> Any:
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"jaxdiff.{name}")
  raise AttributeError(f"module 'jaxdiff' has no attribute {name!r}")
