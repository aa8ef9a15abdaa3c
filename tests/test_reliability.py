"""Reliability of the training job and the tools (issue 12): a run is never lost or
poisoned, what can be known is checked before any compute, errors are one line, and one
job owns a workdir.

The train.py runs are real subprocesses of the tiny run of tests/train_runs.py; they start
from a copy of the session's straight 100-step run (checkpoints 50 and 100), so most of
them only start up, check and stop.
"""

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap

import flax.serialization
import numpy as np
import pytest

from jaxdiff import evaluate
from jaxdiff.config import schema, validation
from jaxdiff.evaluation import classifier, frechet
from jaxdiff.job import trainer, workdir_lock
from train_runs import ROOT, assert_same_checkpoint, command, load, steps, train


def _copy(straight_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(straight_run[0], workdir)
  return workdir


def _error_line(out):
  """The one line train.py printed on stderr for a user error."""
  lines = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith("train.py: error: "), lines[0]
  return lines[0]


def _untouched(workdir, straight_run):
  """The copied run's checkpoints and config.json are as the straight run left them."""
  assert sorted(os.listdir(workdir / "checkpoints")) == ["100", "50"]
  assert (workdir / "config.json").read_text() == (straight_run[0] / "config.json").read_text()


# Defect 1: a shape-changing config is refused by name; nothing is set aside or restarted.
def test_shape_changing_config_is_refused_and_touches_nothing(env, straight_run, tmp_path):
  workdir = _copy(straight_run, tmp_path)
  out = train(env, workdir, "--config.model.base_channels=16", expect_ok=False)
  assert out.returncode == 2
  assert "config.model.base_channels: 8 -> 16" in _error_line(out)
  out = train(env, workdir, "--config.model.base_channels=16", "--allow_config_change",
              expect_ok=False)
  assert out.returncode == 2
  assert "Checkpoint 100 does not fit this config" in _error_line(out)
  _untouched(workdir, straight_run)
  out = train(env, workdir)  # The right command resumes where the run was.
  assert "Resuming from step 100" in out.stdout
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


# Defect 5: a shape-compatible change that alters the run is refused by default too.
@pytest.mark.parametrize("override, change", [
    ("--config.diffusion.prediction=x0", "config.diffusion.prediction: 'eps' -> 'x0'"),
    ("--config.diffusion.num_timesteps=1000", "config.diffusion.num_timesteps: 50 -> 1000"),
    ("--config.train.learning_rate=0.01", "config.train.learning_rate: 0.001 -> 0.01"),
])
def test_changed_config_is_refused_by_default(env, straight_run, tmp_path, override, change):
  workdir = _copy(straight_run, tmp_path)
  out = train(env, workdir, override, expect_ok=False)
  assert out.returncode == 2
  line = _error_line(out)
  assert change in line and "--allow_config_change" in line
  _untouched(workdir, straight_run)


def test_num_steps_below_the_checkpoint_is_refused(env, straight_run, tmp_path):
  workdir = _copy(straight_run, tmp_path)
  out = train(env, workdir, "--config.train.num_steps=60", expect_ok=False)
  assert out.returncode == 2
  assert "config.train.num_steps=60 is below step 100" in _error_line(out)
  _untouched(workdir, straight_run)


def test_safe_changes_resume_and_the_override_flag_allows_others(env, straight_run, tmp_path):
  workdir = _copy(straight_run, tmp_path)
  safe = ("--config.train.num_steps=110", "--config.train.log_every=5",
          "--config.eval.num_samples=64", "--config.sample.num_samples=4")
  out = train(env, workdir, *safe)
  assert "Resuming from step 100" in out.stdout
  logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
  assert logged[-3:] == [100, 105, 110]
  out = train(env, workdir, *safe, "--config.train.ema_decay=0.5", "--allow_config_change")
  assert "Resuming from step 110" in out.stdout
  assert "config.train.ema_decay: 0.995 -> 0.5" in out.stdout


# Defect 2: divergence is caught in the state that is saved, and the newest checkpoint is
# never a poisoned one that every rerun resumes and fails on.
def test_divergence_never_leaves_a_poisoned_newest_checkpoint(env, straight_run, tmp_path):
  workdir = _copy(straight_run, tmp_path)
  # Adam at lr 1e6 moves the weights by ~1e6 at step 100 (finite; saved as checkpoint
  # 101); the gradient at step 101 overflows.
  out = train(env, workdir, "--allow_config_change", "--config.train.learning_rate=1e6",
              "--config.train.warmup_steps=0", "--config.train.num_steps=150",
              "--config.train.checkpoint_every=1", expect_ok=False)
  assert out.returncode == 1
  assert "FloatingPointError: Non-finite loss or gradient norm at step 101" in out.stderr
  assert (workdir / "checkpoints" / "101.non_finite").is_dir()
  assert steps(workdir)[-1] == 100
  out = train(env, workdir, "--allow_config_change")  # Back to the run's learning rate.
  assert "Resuming from step 100" in out.stdout
  assert_same_checkpoint(load(workdir), load(straight_run[0]))


# Defect 3: one job owns a workdir; a second gets one line and status 2; kill -9 frees it.
def test_second_job_is_refused_and_kill_9_leaves_no_lock(env, tmp_path):
  workdir = tmp_path / "owned"
  first = subprocess.Popen(
      command(workdir, "--config.train.num_steps=100000",
              "--config.train.checkpoint_every=100000"),
      env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in first.stdout:
      if line.startswith("step 10 |"):
        break
    second = subprocess.run(command(workdir), env=env, capture_output=True, text=True,
                            timeout=300, check=False)
  finally:
    first.kill()  # SIGKILL: no cleanup code runs.
    first.wait(timeout=60)
  assert second.returncode == 2
  line = _error_line(second)
  assert "is in use by another training job" in line and f"pid {first.pid}" in line
  with workdir_lock.WorkdirLock(workdir):
    pass  # The killed job's lock died with it.


_PREPARE = textwrap.dedent("""
    import os, sys, time
    from jaxdiff.data import sources
    data_dir, go, name = sys.argv[1:]
    open(os.path.join(go + "." + name), "w").close()
    while not os.path.exists(go):
      time.sleep(0.001)
    print(len(sources.tfds_source("sklearn_digits", split="train", data_dir=data_dir)))
""")


# Defect 6: processes that open an unprepared TFDS data_dir at once all get the data.
def test_concurrent_first_use_of_a_tfds_data_dir(tmp_path):
  go = str(tmp_path / "go")
  processes = [subprocess.Popen(
      [sys.executable, "-c", _PREPARE, str(tmp_path / "tfds"), go, str(index)],
      env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for index in range(2)]
  while not all(os.path.exists(f"{go}.{index}") for index in range(2)):
    assert all(p.poll() is None for p in processes), processes[0].communicate()
  open(go, "w").close()  # Both start preparing within a millisecond.
  for process in processes:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert stdout.split()[-1] == "1500"  # After TFDS's own "Downloading and preparing".


# Defect 7 and the one-line config errors of train.py.
@pytest.mark.parametrize("args, message", [
    (["--config.train.batch_sise=32"], "config.train has no field 'batch_sise'; did you mean "
                                       "config.train.batch_size?"),
    (["--config.train.batch_size=abc"], "--config.train.batch_size=abc"),
    (["--config=configs/no_such.py"], "'configs/no_such.py': no such config file"),
    (["--config.model.channel_mult=(1,)", "--config.model.channel_mult=(1, 2)"],
     "--config.model.channel_mult is given twice"),
    (["--config.train.learning_rate=nan"], "config.train.learning_rate=nan"),
    (["--config.model.num_classes=5"], "config.model.num_classes=5, but the dataset "
                                       "'sklearn_digits' split 'train' has 10 classes"),
])
def test_config_errors_are_one_line_before_anything_runs(env, tmp_path, args, message):
  workdir = tmp_path / "never"
  out = subprocess.run(command(workdir, *args), env=env, capture_output=True, text=True,
                       timeout=300, check=False, cwd=ROOT)
  assert out.returncode == 2
  assert message in _error_line(out)
  assert not workdir.exists()


def test_config_file_errors_name_the_file(env, tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("def get_config():\n  raise ValueError('no dataset configured')\n")
  out = subprocess.run(command(tmp_path / "never") + [f"--config={path}"], env=env,
                       capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 2
  assert f"config file {path}: ValueError: no dataset configured" in _error_line(out)


def _tiny_config():
  config = schema.load_config_file(os.path.join(ROOT, "configs", "digits.py"))
  config.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(),
                      num_groups=4)
  config.diffusion.num_timesteps = 50
  config.train.update(num_steps=2, batch_size=8, checkpoint_every=2)
  config.sample.update(num_samples=4)
  return config


@pytest.mark.parametrize("updates, message", [
    ({"sample": {"num_steps": 1000}}, "config.sample.num_steps=1000"),
    ({"model": {"num_classes": 5}}, "config.model.num_classes=5"),
    ({"data": {"channels": 3}}, "config.data.channels=3"),
    ({"eval": {"every": 2, "metrics": ("bpd",), "bpd_split": "validation"}},
     "config.eval.bpd_split='validation'"),
    ({"eval": {"every": 2, "metrics": ("fid",), "inception_weights": "/no/inception.npz"}},
     "config.eval.inception_weights='/no/inception.npz'"),
    ({"train": {"learning_rate": 0.0}}, "config.train.learning_rate=0.0"),
])
def test_errors_that_can_be_known_come_before_any_compute(tmp_path, updates, message):
  config = _tiny_config()
  for section, values in updates.items():
    config[section].update(values)
  with pytest.raises(ValueError, match=re.escape(message)):
    trainer.train(config, workdir=tmp_path / "never")
  assert not (tmp_path / "never").exists()


def test_unwritable_eval_cache_is_refused_before_training(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  config = _tiny_config()
  config.eval.update(every=2, cache_dir=str(blocker / "cache"))
  with pytest.raises(validation.ConfigError, match="config.eval.cache_dir=.* is not writable"):
    trainer.train(config, workdir=tmp_path / "never")
  assert not (tmp_path / "never").exists()


# Defect 8: evaluate checks where it writes before computing, and prints before writing.
def test_evaluate_checks_outputs_before_computing(straight_run, tmp_path, monkeypatch,
                                                  capsys):
  def computed(*args, **kwargs):
    raise AssertionError("computed before checking the outputs")

  monkeypatch.setattr(evaluate.metrics, "evaluate_bpd", computed)
  monkeypatch.setattr(evaluate.metrics, "generate_samples", computed)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  workdir = str(straight_run[0])
  assert evaluate.main(["--workdir", workdir, "--metrics", "bpd",
                        "--out", str(blocker / "eval.json")]) == 2
  assert "--out" in capsys.readouterr().err
  assert evaluate.main(["--workdir", workdir, "--metrics", "classifier_fd",
                        "--cache_dir", str(blocker / "cache")]) == 2
  assert "--cache_dir" in capsys.readouterr().err


def test_evaluate_prints_metrics_before_writing_them(straight_run, tmp_path, monkeypatch,
                                                     capsys):
  monkeypatch.setattr(evaluate, "run", lambda args: {"step": 100, "bpd": 1.25})
  out = tmp_path / "gone" / "eval.json"  # Its folder does not exist: the write fails.
  assert evaluate.main(["--workdir", str(straight_run[0]), "--out", str(out)]) == 1
  captured = capsys.readouterr()
  assert json.loads(captured.out.strip().splitlines()[-1]) == {"step": 100, "bpd": 1.25}
  assert str(out) in captured.err


# Defect 9: evaluation caches are written atomically; a damaged one is named and rebuilt.
def test_damaged_statistics_cache_warns_and_recomputes(tmp_path, caplog):
  path = str(tmp_path / "stats.npz")
  features = np.random.default_rng(0).normal(size=(50, 3))
  stats = frechet.cached_statistics(path, lambda: features)
  with open(path, "r+b") as f:
    f.truncate(40)
  with caplog.at_level(logging.WARNING):
    again = frechet.cached_statistics(path, lambda: features)
  assert path in caplog.text and "recomputing" in caplog.text
  np.testing.assert_array_equal(again.sigma, stats.sigma)
  np.testing.assert_array_equal(frechet.load_statistics(path).mu, stats.mu)  # Rewritten.


def test_statistics_are_written_atomically(tmp_path, monkeypatch):
  path = str(tmp_path / "stats.npz")
  stats = frechet.feature_statistics(np.random.default_rng(0).normal(size=(50, 3)))
  frechet.save_statistics(path, stats)

  def full_disk(file, **arrays):
    with open(file, "wb") if isinstance(file, str) else contextlib.nullcontext(file) as f:
      f.write(b"PK\x03\x04 half")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(frechet.np, "savez", full_disk)
  with pytest.raises(OSError):
    frechet.save_statistics(path, stats)
  np.testing.assert_array_equal(frechet.load_statistics(path).sigma, stats.sigma)
  assert os.listdir(tmp_path) == ["stats.npz"]  # No temporary file left behind.


def test_damaged_classifier_cache_warns_and_retrains(tmp_path, caplog):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(32, 8, 8, 1)).astype(np.float32)
  labels = np.arange(32) % 2
  path = str(tmp_path / "classifier.msgpack")
  trained = classifier.load_or_train_classifier(path, images, labels, num_classes=2,
                                                num_steps=3)
  with open(path, "r+b") as f:
    f.truncate(100)
  with caplog.at_level(logging.WARNING):
    again = classifier.load_or_train_classifier(path, images, labels, num_classes=2,
                                                num_steps=3)
  assert path in caplog.text and "retraining" in caplog.text
  np.testing.assert_array_equal(again.features(images), trained.features(images))
  with open(path, "rb") as f:
    assert flax.serialization.msgpack_restore(f.read())["fingerprint"] == trained.fingerprint


# Defect 10: damage that reads without error is caught by checksums and falls back.
def test_swapped_checkpoint_arrays_fall_back_with_one_warning(straight_run, tmp_path, caplog):
  workdir = _copy(straight_run, tmp_path)
  payload = workdir / "checkpoints" / "100" / "payload"
  shutil.rmtree(payload)
  shutil.copytree(workdir / "checkpoints" / "50" / "payload", payload)  # Reads fine.
  with caplog.at_level(logging.WARNING):
    restored = load(workdir)
  assert_same_checkpoint(restored, load(straight_run[0], step=50))
  warnings = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
  assert len(warnings) == 1 and "arrays differ from what was saved" in warnings[0]


def test_flipped_bytes_never_restore_silently(straight_run, tmp_path, caplog, capfd):
  """Flip 8 bytes in the middle of each data file of checkpoint 100 in turn: each load
  returns checkpoint 100 intact or falls back to 50, with one warning and no traceback."""
  good = {step: load(straight_run[0], step=step) for step in (50, 100)}
  source = straight_run[0] / "checkpoints" / "100" / "payload"
  files = sorted(p.relative_to(source) for p in source.rglob("*")
                 if p.is_file() and p.parent.name == "d")
  assert files
  for name in files:
    workdir = tmp_path / f"flip_{name.name}"
    shutil.copytree(straight_run[0], workdir)
    path = workdir / "checkpoints" / "100" / "payload" / name
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0x40 for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      restored = load(workdir)
    assert_same_checkpoint(restored, good[restored.step])
    fallbacks = [r for r in caplog.records if "is unreadable" in r.getMessage()]
    assert len(fallbacks) == (restored.step == 50), [r.getMessage() for r in caplog.records]
  assert "Traceback" not in capfd.readouterr().err


def test_inconsistent_metadata_falls_back(straight_run, tmp_path, caplog):
  workdir = _copy(straight_run, tmp_path)
  path = workdir / "checkpoints" / "100" / "metadata" / "metadata"
  metadata = json.loads(path.read_text())
  path.write_text(json.dumps(dict(metadata, data_position=99)))
  with caplog.at_level(logging.WARNING):
    restored = load(workdir)
  assert restored.step == 50 and "inconsistent metadata" in caplog.text
  assert_same_checkpoint(restored, load(straight_run[0], step=50))
