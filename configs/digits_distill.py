"""Progressive distillation (Salimans & Ho 2022) of a configs/digits.py teacher, one round.

Pass the teacher with --config.distill.teacher_workdir=DIR (a configs/digits.py run, or the
previous round's workdir) and the student's step count N with --config.distill.student_steps
and --config.sample.num_steps (both 32 here: the teacher takes 64 DDIM steps of the "nested"
grid). The diffusion, model and data sections must be the teacher's (the student starts from
its EMA parameters): a v-prediction teacher (--config.diffusion.prediction=v, as Salimans &
Ho recommend) needs the same override here. Samples with the fewstep sampler (DDIM steps).
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.distill.update(student_steps=32)
  config.train.update(num_steps=1000, learning_rate=2e-4, warmup_steps=0,
                      checkpoint_every=500)
  config.sample.update(sampler="fewstep", num_steps=32)
  return config
