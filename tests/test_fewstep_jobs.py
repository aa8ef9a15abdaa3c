"""Few-step generation as train.py objectives: the teacher checks of a progressive
distillation round, the consistency-training loss of the config, the fewstep defaults."""

import os

import jax
import jax.numpy as jnp
import pytest

from jaxdiff.config import objectives, sampling, schema
from jaxdiff.config.validation import ConfigError
from jaxdiff.job import distill

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def _round(student_steps=4, teacher="/teacher"):
  config = schema.load_config_file(os.path.join(CONFIGS, "digits_distill.py"))
  config.distill.update(teacher_workdir=teacher, student_steps=student_steps)
  return config


def _teacher(distilled_steps=None):
  config = schema.load_config_file(os.path.join(CONFIGS, "digits.py"))
  if distilled_steps is not None:
    config.distill.update(teacher_workdir="/older", student_steps=distilled_steps)
  return config


def test_a_fitting_teacher_passes():
  distill.check_teacher(_round(4), _teacher())
  distill.check_teacher(_round(4), _teacher(distilled_steps=8))


@pytest.mark.parametrize("change,message", [
    (lambda c: c.diffusion.update(objective="sde_dsm"),
     "it has config.diffusion.objective='sde_dsm', this run has 'ddpm'"),
    (lambda c: c.data.update(image_size=16),
     "it has config.data.image_size=16, this run has 8"),
    (lambda c: c.diffusion.update(prediction="v"),
     "it has config.diffusion.prediction='v', this run has 'eps'"),
])
def test_a_teacher_of_another_run_is_refused(change, message):
  teacher = _teacher()
  change(teacher)
  with pytest.raises(ConfigError, match=f"teacher workdir '/teacher' does not fit this round: "
                                        f"{message}"):
    distill.check_teacher(_round(4), teacher)


def test_a_round_that_does_not_halve_is_refused():
  with pytest.raises(ConfigError, match=r"student's num_steps=3 must be half the teacher's 8"):
    distill.check_teacher(_round(3), _teacher(distilled_steps=8))


def test_a_missing_teacher_workdir_is_one_line(tmp_path):
  with pytest.raises(ConfigError, match="config.distill.teacher_workdir: No config.json"):
    distill.load_teacher(_round(4, teacher=str(tmp_path)))


def test_fewstep_defaults_renoise_by_run_kind():
  assert sampling.default_options("fewstep", _round(4)) == {"renoise": 0.0}
  ct = schema.load_config_file(os.path.join(CONFIGS, "digits_consistency.py"))
  assert sampling.default_options("fewstep", ct) == {"renoise": 1.0}


def _cd(teacher="/teacher"):
  config = schema.load_config_file(os.path.join(CONFIGS, "digits_consistency_distill.py"))
  config.distill.update(teacher_workdir=teacher)
  return config


def test_consistency_distillation_teachers():
  distill.check_consistency_teacher(_cd(), _teacher())  # Another objective is the point.
  sde = _teacher()
  sde.diffusion.update(objective="sde_dsm")
  distill.check_consistency_teacher(_cd(), sde)
  with pytest.raises(ConfigError, match="objective='consistency_training'; consistency "
                                        "distillation needs a teacher of"):
    distill.check_consistency_teacher(_cd(), schema.load_config_file(
        os.path.join(CONFIGS, "digits_consistency.py")))
  big = _teacher()
  big.data.update(channels=3)
  with pytest.raises(ConfigError, match="it has config.data.channels=3, this run has 1"):
    distill.check_consistency_teacher(_cd(), big)


def test_consistency_distillation_without_teacher_is_refused():
  from jaxdiff.config import validation
  with pytest.raises(ConfigError, match="'consistency_distillation' needs "
                                        "config.distill.teacher_workdir"):
    validation.validate_config(_cd(teacher=None), num_devices=1)
