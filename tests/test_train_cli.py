"""End-to-end tests of train.py: outputs, exact resume after SIGTERM, faults, config errors.

Every run is a real `python train.py` subprocess on the default digits config with a
tiny U-Net. The runs share a persistent compilation cache, so only the first compiles.
"""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp("jax_cache")
  data_dir = tmp_path_factory.mktemp("tfds")
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", TFDS_DATA_DIR=str(data_dir),
              XLA_FLAGS="")


def _command(workdir, *overrides):
  return [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}", *TINY,
          *overrides]


def _train(env, workdir, *overrides, expect_ok=True):
  out = subprocess.run(_command(workdir, *overrides), env=env, capture_output=True, text=True,
                       timeout=600, check=False)
  if expect_ok:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def _load(workdir, step=None):
  return checkpoints.load_workdir(workdir, step=step)[1]


def _assert_same_checkpoint(a, b):
  assert a.step == b.step
  np.testing.assert_array_equal(a.rng, b.rng)
  leaves_a, leaves_b = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)  # Bitwise: params, EMA, Adam moments, step.


@pytest.fixture(scope="module")
def straight_run(env, tmp_path_factory):
  """NUM_STEPS steps without interruption."""
  workdir = tmp_path_factory.mktemp("straight")
  out = _train(env, workdir)
  return workdir, out


def test_straight_run_writes_everything(straight_run):
  workdir, out = straight_run
  assert "Starting: 1 devices" in out.stdout
  assert checkpoints.Checkpointer(workdir / "checkpoints", max_to_keep=2).all_steps() == [
      50, 100]
  config = checkpoints.read_config(workdir)
  assert config.model.base_channels == 8 and config.model.channel_mult == (1,)
  grid = np.asarray(Image.open(workdir / "samples" / "step_00000100.png"))
  assert grid.shape == (32, 32)  # 8 images of 8x8 in a 3x3 grid with 2-pixel padding.
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
  process = subprocess.Popen(_command(workdir), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  for line in process.stdout:  # The handler is installed before the first step's log.
    if line.startswith("step 10 |"):
      process.send_signal(signal.SIGTERM)
      break
  stdout = process.stdout.read()
  assert process.wait(timeout=600) == 0
  assert "Preempted (SIGTERM): saved step" in stdout
  steps = checkpoints.Checkpointer(workdir / "checkpoints", max_to_keep=2).all_steps()
  assert 10 <= steps[-1] < NUM_STEPS, steps
  out = _train(env, workdir)
  assert f"Resuming from step {steps[-1]}" in out.stdout
  _assert_same_checkpoint(_load(workdir), _load(straight_run[0]))


def test_non_finite_loss_stops_and_keeps_checkpoints(env, straight_run, tmp_path):
  workdir = tmp_path / "nan"
  shutil.copytree(straight_run[0], workdir)
  out = _train(env, workdir, "--config.train.learning_rate=1e30",
               "--config.train.warmup_steps=0", "--config.train.num_steps=150",
               expect_ok=False)
  assert out.returncode != 0
  assert "FloatingPointError: Non-finite loss" in out.stderr
  assert checkpoints.Checkpointer(workdir / "checkpoints", max_to_keep=2).all_steps() == [
      50, 100]
  _assert_same_checkpoint(_load(workdir), _load(straight_run[0]))


def test_corrupt_latest_checkpoint_falls_back(env, straight_run, tmp_path, caplog):
  workdir = tmp_path / "corrupt"
  shutil.copytree(straight_run[0], workdir)
  for path in (workdir / "checkpoints" / "100" / "payload").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  with caplog.at_level(logging.WARNING):
    restored = _load(workdir)
  assert "checkpoints/100 is unreadable" in caplog.text
  _assert_same_checkpoint(restored, _load(straight_run[0], step=50))
  # Training resumes from step 50, sets the bad step aside and reproduces it exactly.
  out = _train(env, workdir)
  assert "Resuming from step 50" in out.stdout
  assert (workdir / "checkpoints" / "100.unreadable").is_dir()
  _assert_same_checkpoint(_load(workdir), _load(straight_run[0]))


def test_load_workdir_reports_missing_things(straight_run, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"available steps: \[50, 100\]"):
    checkpoints.load_workdir(straight_run[0], step=70)
  with pytest.raises(FileNotFoundError, match="No config.json in workdir"):
    checkpoints.load_workdir(tmp_path)
  config, restored = checkpoints.load_workdir(straight_run[0], step=50)
  assert restored.step == int(restored.state.step) == 50
  assert restored.metadata["data_position"] == 50 and config.train.num_steps == NUM_STEPS


def test_config_typo_is_reported_before_anything_runs(env, tmp_path):
  out = _train(env, tmp_path / "typo", "--config.train.batch_sise=32", expect_ok=False)
  assert out.returncode != 0
  assert "batch_sise" in out.stderr
  assert not (tmp_path / "typo").exists()


def test_batch_not_divisible_by_devices_is_reported_before_compiling(env, tmp_path):
  eight = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = _train(eight, tmp_path / "div", "--config.train.batch_size=12", expect_ok=False)
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
      _command(workdir, "--config.train.num_steps=50", f"--coordinator_address=localhost:{port}",
               "--num_processes=2", f"--process_id={i}"),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-4000:]
  assert "Starting: 2 devices, 2 processes" in outputs[0][0]
  assert outputs[1][0].count("step 50 |") == 0  # Only process 0 logs.
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [10, 20, 30, 40, 50]
  two, one = _load(workdir), _load(straight_run[0], step=50)
  assert two.step == one.step == 50
  # Same global batches and keys; only the cross-process reduction order differs. Measured
  # after 50 Adam steps (lr warming up to 5e-4): max difference 2.2e-7; 1e-5 is a 45x margin.
  for x, y in zip(jax.tree.leaves(two.state.params), jax.tree.leaves(one.state.params)):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
