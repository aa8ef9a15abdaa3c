"""train.py runs of few-step objectives: resuming mid-curriculum (consistency training) and
mid-round (progressive distillation) is bitwise exact, as for the default objective
(tests/test_train_cli.py); a teacher that does not fit is refused in one line."""

import os
import subprocess
import sys

import pytest

from train_runs import ROOT, assert_same_checkpoint, load, steps, with_overrides

pytestmark = pytest.mark.slow
STEPS = 20
# iCT with s0 = 2, s1 = 8 over 20 steps: N(k) = 3, 5, 9 from k = 0, 6, 12; resuming at 10.
CT = ("--config.diffusion.curriculum_steps=20", "--config.diffusion.ct_s0=2",
      "--config.diffusion.ct_s1=8")


def _merged(*overrides):
  """The overrides, a later one replacing an earlier one of the same field."""
  fields = {arg.split("=", 1)[0]: arg for arg in overrides}
  return list(fields.values())


def _run(env, config, workdir, *overrides, expect_ok=True):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'configs', config)}", f"--workdir={workdir}",
         *with_overrides(*_merged(f"--config.train.num_steps={STEPS}",
                                  "--config.train.checkpoint_every=10",
                                  "--config.train.log_every=5",
                                  "--config.train.async_checkpointing=false", *overrides))]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
  if expect_ok:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def _stopped_then_resumed(env, config, tmp_path, *overrides):
  """(straight run's workdir, run stopped at step 10 then resumed to STEPS)."""
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  _run(env, config, straight, *overrides)
  _run(env, config, resumed, *overrides, "--config.train.num_steps=10")
  assert steps(resumed) == [10]
  out = _run(env, config, resumed, *overrides)
  assert "Resuming from step 10" in out.stdout
  return straight, resumed


def test_consistency_training_resumes_mid_curriculum_exactly(env, tmp_path):
  straight, resumed = _stopped_then_resumed(env, "digits_consistency.py", tmp_path, *CT)
  assert_same_checkpoint(load(resumed), load(straight))


def test_progressive_distillation_resumes_mid_round_exactly(env, tmp_path):
  teacher = tmp_path / "teacher"
  _run(env, "digits.py", teacher, "--config.diffusion.prediction=v")
  rnd = ("--config.diffusion.prediction=v", f"--config.distill.teacher_workdir={teacher}",
         "--config.distill.student_steps=4", "--config.sample.num_steps=4")
  straight, resumed = _stopped_then_resumed(env, "digits_distill.py", tmp_path / "r1", *rnd)
  assert_same_checkpoint(load(resumed), load(straight))
  # The next round needs 2 steps: 3 is refused before anything compiles.
  bad = ("--config.diffusion.prediction=v", f"--config.distill.teacher_workdir={straight}",
         "--config.distill.student_steps=3", "--config.sample.num_steps=3")
  out = _run(env, "digits_distill.py", tmp_path / "r2", *bad, expect_ok=False)
  assert out.returncode != 0
  assert "student's num_steps=3 must be half the teacher's 4" in out.stderr.strip().splitlines()[-1]
