"""diffusers scheduler configs (`scheduler_config.json`) as jaxdiff noise schedules."""

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.models.pretrained import PretrainedError

# diffusers' scheduler config -> jaxdiff's noise process and parameterization.
_PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VARIANCES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
              "fixed_large": "fixed_large", "fixed_large_log": "fixed_large",
              "learned": "learned", "learned_range": "learned_range"}


def schedule_from_scheduler_config(config: Mapping[str, Any], *, dtype: Any = jnp.float32
                                   ) -> tuple[schedules.Schedule, dict[str, Any]]:
  """The `Schedule` and the `p_mean_variance` options a diffusers scheduler config names.

  Reads the keys that diffusers' discrete schedulers (DDPMScheduler, DDIMScheduler, PNDM,
  DPM-Solver, ...) share: `num_train_timesteps` (default 1000), `beta_schedule` ("linear":
  betas linear from `beta_start` to `beta_end`, default 1e-4 to 0.02, unscaled;
  "scaled_linear": linear in sqrt(beta); "squaredcos_cap_v2": Nichol & Dhariwal's cosine;
  "sigmoid") or `trained_betas`; `prediction_type` (epsilon / sample / v_prediction),
  `variance_type` and `clip_sample`. Returns `(schedule, {"prediction", "variance",
  "clip_denoised"})`.
  """
  steps = config.get("num_train_timesteps", 1000)
  start, end = config.get("beta_start", 1e-4), config.get("beta_end", 0.02)
  kind = config.get("beta_schedule", "linear")
  if config.get("trained_betas") is not None:
    schedule = schedules.Schedule.from_betas(np.asarray(config["trained_betas"], np.float64),
                                             dtype=dtype)
  elif kind == "linear":  # make_schedule scales its endpoints by 1000 / T.
    schedule = schedules.make_schedule("linear", steps, dtype, beta_start=start * steps / 1000,
                                       beta_end=end * steps / 1000)
  elif kind in ("scaled_linear", "sigmoid"):
    schedule = schedules.make_schedule("quadratic" if kind == "scaled_linear" else "sigmoid",
                                       steps, dtype, beta_start=start, beta_end=end)
  elif kind == "squaredcos_cap_v2":
    schedule = schedules.make_schedule("cosine", steps, dtype)
  else:
    raise PretrainedError(f"scheduler config: beta_schedule={kind!r} is not supported; "
                          "supported: linear, scaled_linear, squaredcos_cap_v2, sigmoid")
  prediction = config.get("prediction_type", "epsilon")
  variance = config.get("variance_type", "fixed_small")
  for key, value, table in (("prediction_type", prediction, _PREDICTIONS),
                            ("variance_type", variance, _VARIANCES)):
    if value not in table:
      raise PretrainedError(f"scheduler config: {key}={value!r} is not supported; "
                            f"supported: {tuple(table)}")
  return schedule, {"prediction": _PREDICTIONS[prediction], "variance": _VARIANCES[variance],
                    "clip_denoised": bool(config.get("clip_sample", True))}


def find_scheduler_config(directory: str | os.PathLike) -> str | None:
  """The scheduler config of a diffusers model folder: its own `scheduler_config.json`, or
  `../scheduler/scheduler_config.json` beside it in a pipeline folder; None if neither."""
  directory = os.fspath(directory)
  for path in (os.path.join(directory, "scheduler_config.json"),
               os.path.join(directory, os.pardir, "scheduler", "scheduler_config.json")):
    if os.path.isfile(path):
      return os.path.normpath(path)
  return None
