"""Consistency distillation (Song et al. 2023, Algorithm 2) of a digits teacher.

Pass the teacher with --config.distill.teacher_workdir=DIR: a run of any objective with
8x8 images (configs/digits.py, digits_sde.py, ...). The consistency model, its network and the
improved-CT choices are those of configs/digits_consistency.py; x_hat_{t_n} is one Heun step
of the teacher's probability-flow ODE, read on the sigma axis through its denoiser.
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits_consistency.py"))
  config.diffusion.update(objective="consistency_distillation", cd_solver="heun")
  return config
