"""Progressive distillation rounds (Salimans & Ho 2022) as train.py runs: the teacher.

A round is a train.py run with `config.distill.teacher_workdir` (the previous round's
workdir, or a trained model's) and `config.distill.student_steps` N: the student starts from
the teacher's EMA parameters and learns `jaxdiff.distillation.distillation_loss` against the
teacher's 2N steps. The teacher must share the run's diffusion, model and data shape (the
student inherits its process, parameterization and network); a distilled teacher must have
taken exactly 2N steps. Violations are one-line `ConfigError`s, raised before compiling.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jaxdiff import distillation
from jaxdiff.config import objectives
from jaxdiff.config.validation import ConfigError
from jaxdiff.job import checkpoints, generation

DISTILLABLE = ("ddpm", "sde_dsm", "ncsn")


def _first_difference(section: str, teacher: ml_collections.ConfigDict,
                      student: ml_collections.ConfigDict,
                      keys: tuple[str, ...] | None = None) -> str | None:
  """The first field of config.<section> (or of its ``keys``) where the two differ."""
  mine, theirs = student[section].to_dict(), teacher[section].to_dict()
  for key in keys or sorted(set(mine) | set(theirs)):
    if mine.get(key) != theirs.get(key):
      return f"config.{section}.{key}={theirs.get(key)!r}, this run has {mine.get(key)!r}"
  return None


def check_teacher(config: ml_collections.ConfigDict,
                  teacher_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless ``teacher_config`` can teach this round (module docstring)."""
  workdir = config.distill.teacher_workdir
  student_steps = config.distill.student_steps
  if not isinstance(student_steps, int) or isinstance(student_steps, bool) or student_steps < 1:
    raise ConfigError(f"config.distill.student_steps={student_steps!r}; expected a positive "
                      "integer (half the teacher's steps).")
  if config.diffusion.objective not in DISTILLABLE:
    raise ConfigError(f"config.diffusion.objective={config.diffusion.objective!r} cannot be "
                      f"progressively distilled; expected one of {DISTILLABLE}.")
  for section, keys in (("diffusion", None), ("model", None),
                        ("data", ("image_size", "channels"))):
    difference = _first_difference(section, teacher_config, config, keys)
    if difference is not None:
      raise ConfigError(f"teacher workdir {workdir!r} does not fit this round: it has "
                        f"{difference}.")
  teacher_steps = teacher_config.distill.student_steps
  if teacher_config.distill.teacher_workdir is not None:
    try:
      distillation.check_round(teacher_steps=teacher_steps, student_steps=student_steps)
    except ValueError as e:
      raise ConfigError(f"config.distill: {e} (teacher workdir {workdir!r})") from None


def load_teacher(config: ml_collections.ConfigDict) -> Any:
  """The EMA parameters of the teacher of this round, after `check_teacher`."""
  try:
    teacher_config, restored = checkpoints.load_workdir(config.distill.teacher_workdir)
  except (FileNotFoundError, checkpoints.CheckpointDamaged) as e:
    raise ConfigError(f"config.distill.teacher_workdir: {e}") from None
  check_teacher(config, teacher_config)
  return restored.state.ema_params


def distillation_loss_fn(config: ml_collections.ConfigDict, model: Any,
                         teacher_params: Any) -> objectives.LossFn:
  """`loss_fn(model_fn, x0, rng) -> [B]` of a round: the student (``model_fn``) against the
  teacher (``model`` with ``teacher_params``), both read through the run's denoiser."""
  teacher = objectives.denoiser_from_config(
      config.diffusion, generation.model_fn_for(model, teacher_params))
  steps = config.distill.student_steps

  def loss_fn(model_fn: Any, x0: jax.Array, rng: jax.Array) -> jax.Array:
    student = objectives.denoiser_from_config(config.diffusion, model_fn)
    return distillation.distillation_loss(student, teacher, x0, rng, student_steps=steps)

  return loss_fn
