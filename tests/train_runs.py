"""Helpers of the end-to-end train.py tests: the tiny run's arguments, subprocess runs,
and bitwise comparison of checkpoints.

Every run is a real `python train.py` subprocess on the default digits config with a
tiny U-Net (`TINY`); the runs use the suite's persistent compilation cache
(the `env` fixture of conftest.py), so only the first compiles.
"""

import os
import subprocess
import sys

import jax
import numpy as np

from jaxdiff.job import checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 100
TINY = [
    "--config.model.base_channels=8", "--config.model.channel_mult=(1,)",
    "--config.model.attention_resolutions=()", "--config.model.num_groups=4",
    "--config.diffusion.num_timesteps=50", "--config.train.batch_size=16",
    "--config.train.log_every=10", "--config.train.checkpoint_every=50",
    "--config.train.keep_checkpoints=2", "--config.sample.num_samples=8",
    f"--config.train.num_steps={NUM_STEPS}",
]


def with_overrides(*overrides):
  """TINY with each `--config.FIELD=VALUE` of `overrides` replacing TINY's own for FIELD."""
  fields = {arg.split("=", 1)[0] for arg in overrides}
  return [arg for arg in TINY if arg.split("=", 1)[0] not in fields] + list(overrides)


def command(workdir, *overrides):
  return [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}",
          *with_overrides(*overrides)]


def train(env, workdir, *overrides, expect_ok=True):
  out = subprocess.run(command(workdir, *overrides), env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  if expect_ok:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def load(workdir, step=None):
  return checkpoints.load_workdir(workdir, step=step)[1]


def steps(workdir):
  return checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  max_to_keep=None).all_steps()


def assert_same_checkpoint(a, b):
  assert a.step == b.step
  np.testing.assert_array_equal(a.rng, b.rng)
  leaves_a, leaves_b = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # Bitwise: params, EMA, Adam moments, step.
