"""End-to-end tests of train.py: outputs, exact resume after SIGTERM and kill -9, faults.

Every run is a real `python train.py` subprocess on the default digits config with a
tiny U-Net (tests/train_runs.py). The runs use the suite's persistent compilation cache
(tests/conftest.py), so only the first compiles.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdiff.job import checkpoints
from train_runs import NUM_STEPS, assert_same_checkpoint, command, load, steps, train


def test_straight_run_writes_everything(straight_run):
  workdir, out = straight_run
  assert "Starting: 1 devices" in out.stdout
  assert checkpoints.Checkpointer(workdir / "checkpoints", max_to_keep=2).all_steps() == [
      50, 100]
  config = checkpoints.read_config(workdir)
  assert config.model.base_channels == 8 and config.model.channel_mult == (1,)
  grid = np.asarray(Image.open(workdir / "samples" / "step_00000100.png"))
  # 8 images of 8x8 in a 3x3 grid with 2-pixel padding (32 x 32), enlarged 8 x to 256.
  assert grid.shape == (256, 256)
  assert grid.std() > 0
  metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [m["step"] for m in metrics] == list(range(10, NUM_STEPS + 1, 10))
  assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]  # Loss at init is ~1 (eps MSE).
  assert all(np.isfinite(m["grad_norm"]) and m["images_per_sec"] > 0 for m in metrics)
  # Throughput: images/s = steps/s * batch; TFLOP/s and MFU from the compiled step's FLOPs.
  flops = [m["tflops"] * 1e12 / m["steps_per_sec"] for m in metrics]
  np.testing.assert_allclose(flops, flops[0], rtol=1e-6)  # One FLOP count per step.
  for m in metrics:
    np.testing.assert_allclose(m["images_per_sec"], 16 * m["steps_per_sec"], rtol=1e-6)
    assert 0 < m["mfu"] < 1
  assert "GFLOP per step per device (XLA cost analysis); peak" in out.stdout
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_sigterm_then_resume_is_bitwise_exact(env, straight_run, tmp_path):
  workdir = tmp_path / "resumed"
  process = subprocess.Popen(command(workdir), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  for line in process.stdout:  # The handler is installed before the first step's log.
    if line.startswith("step 10 |"):
      process.send_signal(signal.SIGTERM)
      break
  stdout = process.stdout.read()
  assert process.wait(timeout=600) == 143  # 128 + SIGTERM: schedulers requeue the job.
  assert "Preempted (SIGTERM): saved step" in stdout
  saved = steps(workdir)
  assert 10 <= saved[-1] < NUM_STEPS, saved
  out = train(env, workdir)
  assert f"Resuming from step {saved[-1]}" in out.stdout
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


def _metric_steps(workdir):
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_kill_9_then_resume_is_exact_and_logs_each_step_once(env, straight_run, tmp_path):
  """Killed after logging step 60 (last checkpoint: 50): the resumed run repeats steps
  51..100 exactly, and metrics.jsonl has each log step once."""
  workdir = tmp_path / "killed"
  # Synchronous saves: an asynchronous save of step 50 may still be writing at step 60.
  process = subprocess.Popen(command(workdir, "--config.train.async_checkpointing=false"),
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
  for line in process.stdout:
    if line.startswith("step 60 |"):
      process.kill()
      break
  process.wait(timeout=600)
  assert steps(workdir) == [50] and _metric_steps(workdir)[-1] >= 60
  out = train(env, workdir)
  assert "Resuming from step 50" in out.stdout
  assert _metric_steps(workdir) == list(range(10, NUM_STEPS + 1, 10))
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


def test_non_finite_loss_stops_and_keeps_checkpoints(env, straight_run, tmp_path):
  workdir = tmp_path / "nan"
  shutil.copytree(straight_run[0], workdir)
  out = train(env, workdir, "--config.train.learning_rate=1e30",
              "--config.train.warmup_steps=0", "--config.train.num_steps=150",
              "--allow_config_change", expect_ok=False)
  assert out.returncode == 1
  assert "FloatingPointError: Non-finite loss" in out.stderr
  assert steps(workdir) == [50, 100]
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


def test_corrupt_latest_checkpoint_falls_back(env, straight_run, tmp_path, caplog):
  workdir = tmp_path / "corrupt"
  shutil.copytree(straight_run[0], workdir)
  for path in (workdir / "checkpoints" / "100" / "payload").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    restored = load(workdir)
  assert "checkpoints/100 is unreadable" in caplog.text
  assert_same_checkpoint(restored, load(straight_run[0], step=50))
  # Training resumes from step 50, sets the bad step aside and reproduces it exactly.
  out = train(env, workdir)
  assert "Resuming from step 50" in out.stdout
  assert (workdir / "checkpoints" / "100.unreadable").is_dir()
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


def test_load_workdir_reports_missing_things(straight_run, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"available steps: \[50, 100\]"):
    checkpoints.load_workdir(straight_run[0], step=70)
  with pytest.raises(FileNotFoundError, match="No config.json in workdir"):
    checkpoints.load_workdir(tmp_path)
  config, restored = checkpoints.load_workdir(straight_run[0], step=50)
  assert restored.step == int(restored.state.step) == 50
  assert restored.metadata["data_position"] == 50 and config.train.num_steps == NUM_STEPS


def test_config_typo_is_reported_before_anything_runs(env, tmp_path):
  out = train(env, tmp_path / "typo", "--config.train.batch_sise=32", expect_ok=False)
  assert out.returncode != 0
  assert "batch_sise" in out.stderr
  assert not (tmp_path / "typo").exists()


def test_batch_not_divisible_by_devices_is_reported_before_compiling(env, tmp_path):
  eight = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = train(eight, tmp_path / "div", "--config.train.batch_size=12", expect_ok=False)
  assert out.returncode != 0
  assert "config.train.batch_size=12 is not divisible by the 8 devices" in out.stderr
  assert not (tmp_path / "div").exists()


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_in_lockstep(env, straight_run, tmp_path):
  """jax.distributed on localhost: 2 CPU processes x 1 device share each global batch."""
  workdir, port = tmp_path / "two", _free_port()
  processes = [subprocess.Popen(
      command(workdir, "--config.train.num_steps=50", f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}"),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-4000:]
  assert "Starting: 2 devices, 2 processes" in outputs[0][0]
  assert outputs[1][0].count("step 50 |") == 0  # Only process 0 logs.
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [10, 20, 30, 40, 50]
  two, one = load(workdir), load(straight_run[0], step=50)
  assert two.step == one.step == 50
  # Same global batches and keys; only the cross-process reduction order differs. Measured
  # after 50 Adam steps (lr warming up to 5e-4): max difference 2.2e-7; 1e-5 is a 45x margin.
  for x, y in zip(jax.tree.leaves(two.state.params), jax.tree.leaves(one.state.params)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
