"""Distillation runs of train.py: the teacher of progressive and consistency distillation.

A round is a train.py run with `config.distill.teacher_workdir` (the previous round's
workdir, or a trained model's) and `config.distill.student_steps` N: the student starts from
the teacher's EMA parameters and learns `jaxdiff.distillation.distillation_loss` against the
teacher's 2N steps. The teacher must share the run's diffusion, model and data shape (the
student inherits its process, parameterization and network); a distilled teacher must have
taken exactly 2N steps. Consistency distillation (objective "consistency_distillation",
Song et al. 2023, Algorithm 2) reads a teacher of any objective of DISTILLABLE with the same
image shape, through its own config's denoiser; the student starts fresh. Violations are
one-line `ConfigError`s, raised before compiling.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from jaxdiff import distillation
from jaxdiff.config import builders, objectives
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


def check_consistency_teacher(config: ml_collections.ConfigDict,
                              teacher_config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError unless ``teacher_config`` can teach consistency distillation."""
  workdir = config.distill.teacher_workdir
  if teacher_config.diffusion.objective not in DISTILLABLE:
    raise ConfigError(f"teacher workdir {workdir!r} has config.diffusion.objective="
                      f"{teacher_config.diffusion.objective!r}; consistency distillation "
                      f"needs a teacher of {DISTILLABLE}.")
  difference = _first_difference("data", teacher_config, config, ("image_size", "channels"))
  if difference is not None:
    raise ConfigError(f"teacher workdir {workdir!r} does not fit this run: it has "
                      f"{difference}.")


def load_teacher(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
  """(the teacher's config, its EMA parameters), after the checks of this run's kind."""
  try:
    teacher_config, restored = checkpoints.load_workdir(config.distill.teacher_workdir)
  except (FileNotFoundError, checkpoints.CheckpointDamaged) as e:
    raise ConfigError(f"config.distill.teacher_workdir: {e}") from None
  if config.diffusion.objective == "consistency_distillation":
    check_consistency_teacher(config, teacher_config)
  else:
    check_teacher(config, teacher_config)
  return teacher_config, restored.state.ema_params


def teacher_loss_fn(config: ml_collections.ConfigDict, model: Any,
                    teacher: tuple[ml_collections.ConfigDict, Any]) -> Any:
  """The loss of a run with a teacher (`load_teacher`): consistency distillation's
  `objectives.consistency_loss_fn`, or a progressive distillation round's, the student
  (``model``) against the teacher's 2N steps."""
  teacher_config, params = teacher
  if config.diffusion.objective == "consistency_distillation":
    den = objectives.denoiser_from_config(
        teacher_config.diffusion,
        generation.model_fn_for(builders.build_model(teacher_config), params))
    return objectives.consistency_loss_fn(config.diffusion, teacher=den)
  den = objectives.denoiser_from_config(config.diffusion, generation.model_fn_for(model, params))
  steps = config.distill.student_steps

  def loss_fn(model_fn: Any, x0: jax.Array, rng: jax.Array) -> jax.Array:
    student = objectives.denoiser_from_config(config.diffusion, model_fn)
    return distillation.distillation_loss(student, den, x0, rng, student_steps=steps)

  return loss_fn
