"""sample.py and `python -m jaxdiff.evaluate` on a workdir written by the training job.

The workdir comes from `jaxdiff.job.trainer.train` with the default config (configs/digits.py)
shrunk to a 2-step run of a tiny U-Net, so that it has config.json and a checkpoint
exactly as `python train.py` leaves them.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdiff import evaluate, images
from jaxdiff.config import builders, schema
from jaxdiff.job import checkpoints, cli, evaluation, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_module(name: str, path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


sample = _load_module("sample_cli", ROOT / "sample.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _tiny_config(name="digits.py"):
  config = schema.load_config_file(ROOT / "configs" / name)
  config.model.update(base_channels=8, channel_mult=(1,), attention_resolutions=(),
                      num_groups=4)
  config.train.update(num_steps=2, batch_size=8, checkpoint_every=2, warmup_steps=1,
                      async_checkpointing=False)
  config.sample.update(num_samples=4, num_steps=2)
  return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cache_dir):
  """A 2-step run that also evaluates classifier_fd at step 2 (config.eval)."""
  config = _tiny_config()
  config.eval.update(every=2, num_samples=8, cache_dir=cache_dir)
  path = tmp_path_factory.mktemp("run")
  trainer.train(config, workdir=path)
  return str(path)


@pytest.fixture(scope="module")
def ncsn_workdir(tmp_path_factory):
  """A 2-step NCSN run (configs/digits_ncsn.py, 4 noise levels) with its ald sample grid."""
  config = _tiny_config("digits_ncsn.py")
  config.diffusion.num_scales = 4
  path = tmp_path_factory.mktemp("ncsn")
  trainer.train(config, workdir=path)
  return str(path)


def _run(argv, capsys):
  code = sample.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_writes_grid_and_npz_deterministically(workdir, tmp_path, capsys):
  common = ["--workdir", workdir, "--num_samples", "6", "--num_steps", "3", "--rows", "2"]
  outputs = []
  for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
    code, out, _ = _run(common + ["--seed", seed, "--out", str(tmp_path), "--name", name],
                        capsys)
    assert code == 0 and f"{name}.png" in out
    with np.load(tmp_path / f"{name}.npz") as data:
      outputs.append(data["images"])
  assert outputs[0].shape == (6, 8, 8, 1) and outputs[0].dtype == np.uint8
  np.testing.assert_array_equal(outputs[0], outputs[1])  # same seed, same images
  assert (outputs[0] != outputs[2]).any()                 # another seed, other images
  grid = np.asarray(Image.open(tmp_path / "a.png"))
  # 2 x 3 cells of 8 + 2 padding, 22 x 32 pixels, enlarged 12 x to at least 256 a side.
  assert grid.shape == (12 * (2 * 10 + 2), 12 * (3 * 10 + 2))
  np.testing.assert_array_equal(grid[24:120:12, 24:120:12], outputs[0][0, ..., 0])


def test_default_output_goes_to_the_workdir(workdir, capsys):
  code, out, _ = _run(["--workdir", workdir, "--sampler", "ddim", "--num_steps", "2",
                       "--eta", "0.5"], capsys)
  assert code == 0
  with np.load(os.path.join(workdir, "samples_ddim_2_seed0.npz")) as data:
    assert data["images"].shape == (4, 8, 8, 1)  # config.sample.num_samples
  assert os.path.isfile(os.path.join(workdir, "samples_ddim_2_seed0.png"))


def test_inpainting_keeps_the_known_pixels_and_sdedit_runs(workdir, tmp_path, capsys):
  levels = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
  mask = np.zeros((8, 8, 1), np.uint8)
  mask[:, :4] = 255  # keep the left half
  images.save_png(str(tmp_path / "x.png"), levels)
  images.save_png(str(tmp_path / "m.png"), mask)
  code, _, err = _run(["--workdir", workdir, "--sampler", "inpaint", "--image",
                       str(tmp_path / "x.png"), "--mask", str(tmp_path / "m.png"),
                       "--num_samples", "2", "--num_steps", "3", "--out", str(tmp_path),
                       "--name", "inp"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "inp.npz") as data:
    np.testing.assert_array_equal(data["images"][:, :, :4], np.broadcast_to(levels[:, :4],
                                                                           (2, 8, 4, 1)))
  code, _, err = _run(["--workdir", workdir, "--sampler", "sdedit", "--image",
                       str(tmp_path / "x.png"), "--strength", "0.3", "--num_samples", "2",
                       "--num_steps", "4", "--out", str(tmp_path), "--name", "sde"], capsys)
  assert code == 0, err
  assert (tmp_path / "sde.png").is_file()


def test_bad_input_is_one_clear_line(workdir, tmp_path, capsys):
  empty = tmp_path / "empty"
  empty.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), empty / "config.json")
  images.save_png(str(tmp_path / "x.png"), np.zeros((8, 8, 1), np.uint8))
  images.save_png(str(tmp_path / "big.png"), np.zeros((16, 16, 1), np.uint8))
  cases = [
      (["--workdir", str(empty)], "No checkpoint in"),
      (["--workdir", workdir, "--sampler", "inpaint", "--image", str(tmp_path / "x.png"),
        "--mask", str(tmp_path / "big.png")], "is 16x16; expected 8x8"),
      (["--workdir", workdir, "--sampler", "euler_maruyama_typo"],
       "--sampler 'euler_maruyama_typo' does not exist; choose one of ddpm, ddim"),
      (["--workdir", workdir, "--sampler", "pc", "--num_steps", "10"],
       "--sampler pc: predictor 'reverse_diffusion' walks the schedule's own 500 steps; "
       "num_steps=10 needs predictor='euler_maruyama'"),
      (["--workdir", workdir, "--sampler", "ddim", "--eta", "-1"], "eta must be >= 0"),
      (["--workdir", workdir, "--sampler", "edm_heun", "--num_steps", "1"],
       "num_steps=1 must be >= 2"),
      (["--workdir", workdir, "--labels", "3"], "the model is unconditional"),
      (["--workdir", workdir, "--sampler", "sdedit"], "--sampler sdedit needs --image"),
      (["--workdir", workdir, "--mask", str(tmp_path / "x.png")], "--mask needs --image"),
      (["--workdir", workdir, "--sampler", "sdedit", "--image", str(tmp_path / "no.png")],
       "--image: no file at"),
      (["--workdir", workdir, "--guidance_scale", "3"], "needs a conditional model"),
      (["--workdir", workdir, "--bogus"], "unrecognized arguments: --bogus"),
  ]
  for argv, message in cases:
    code, out, err = _run(argv, capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sample.py: error: "), err
    assert message in lines[0], (message, lines[0])


def test_class_labels_beyond_the_model_are_refused():
  labels = cli.parse_labels("1,2", num_classes=10, num_samples=5)
  np.testing.assert_array_equal(labels, [1, 2, 1, 2, 1])
  np.testing.assert_array_equal(cli.parse_labels(None, num_classes=3, num_samples=4),
                                [0, 1, 2, 0])
  with pytest.raises(cli.CliError, match=r"class 12 does not exist; the model has 10 "
                                            r"classes \(0..9\)"):
    cli.parse_labels("3,12", num_classes=10, num_samples=4)


def test_command_line_error_has_no_traceback():
  result = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--workdir", "/nonexistent",
                           "--sampler", "nope"], capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip() == ("sample.py: error: --sampler 'nope' does not exist; "
                                   "choose one of ddpm, ddim, dpm_solver_pp_2m, edm_heun, pc, "
                                   "ald, euler, heun, midpoint, unipc, fewstep, ode, inpaint, "
                                   "sdedit, d3pm, unmask")


def test_training_logs_periodic_evaluation(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evaluations = [row for row in rows if "eval/classifier_fd" in row]
  assert [row["step"] for row in evaluations] == [2]
  assert evaluations[0]["eval/classifier_fd"] > 0


@pytest.mark.parametrize("sampler", ["dpm_solver_pp_2m", "edm_heun", "heun"])
def test_continuous_samplers_run_on_a_ddpm_run(workdir, tmp_path, capsys, sampler):
  code, _, err = _run(["--workdir", workdir, "--sampler", sampler, "--num_steps", "3",
                       "--out", str(tmp_path), "--name", sampler], capsys)
  assert code == 0, err
  with np.load(tmp_path / f"{sampler}.npz") as data:
    assert data["images"].shape == (4, 8, 8, 1)


def test_same_seed_same_images_in_sample_py_and_evaluation(workdir, tmp_path, capsys):
  config, restored = checkpoints.load_workdir(workdir)
  config.sample.update(sampler="ddim", num_steps=3)
  from_evaluation = evaluation.generate_samples(
      config, builders.build_model(config), restored.state.ema_params, jax.random.PRNGKey(7),
      num_samples=5, batch_size=5)
  code, _, err = _run(["--workdir", workdir, "--sampler", "ddim", "--num_steps", "3",
                       "--num_samples", "5", "--seed", "7", "--out", str(tmp_path),
                       "--name", "same"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "same.npz") as data:
    np.testing.assert_array_equal(data["images"], images.to_uint8(from_evaluation))


def test_ncsn_run_samples_with_annealed_langevin_and_others(ncsn_workdir, capsys):
  assert os.path.isfile(os.path.join(ncsn_workdir, "samples", "step_00000002.png"))
  code, out, err = _run(["--workdir", ncsn_workdir, "--num_samples", "3"], capsys)
  assert code == 0, err
  with np.load(os.path.join(ncsn_workdir, "samples_ald_2_seed0.npz")) as data:
    assert data["images"].shape == (3, 8, 8, 1) and data["images"].std() > 0
  code, out, err = _run(["--workdir", ncsn_workdir, "--sampler", "ddim", "--num_steps", "4"],
                        capsys)
  assert code == 0, err


def test_evaluate_command_reports_bpd_and_classifier_distance(workdir, cache_dir, tmp_path,
                                                              capsys, monkeypatch):
  monkeypatch.setenv("JAXDIFF_CACHE", cache_dir)
  out = tmp_path / "eval.json"
  code = evaluate.main(["--workdir", workdir, "--metrics", "bpd,classifier_fd",
                        "--bpd_split", "test[:6]", "--bpd_batch_size", "4",
                        "--num_samples", "20", "--num_steps", "3", "--out", str(out)])
  assert code == 0
  results = json.loads(out.read_text())
  assert results["step"] == 2 and results["bpd_examples"] == 6
  assert results["bpd"] > 0 and 0 < results["bpd_stderr"] < results["bpd"]
  assert results["classifier_fd"] > 0 and results["num_samples"] == 20
  assert any(name.startswith("classifier_") for name in os.listdir(cache_dir))
  code = evaluate.main(["--workdir", workdir, "--metrics", "fid"])
  assert code == 2
  assert "--metrics fid needs --inception_weights" in capsys.readouterr().err


def test_evaluate_during_training_hook(workdir, cache_dir):
  config, restored = checkpoints.load_workdir(workdir)
  model = builders.build_model(config)
  scalars = evaluation.evaluate_during_training(
      config, model, restored.state.ema_params, jax.random.PRNGKey(0),
      metrics=["classifier_fd"], num_samples=8, cache_dir=cache_dir)
  assert set(scalars) == {"classifier_fd"} and scalars["classifier_fd"] > 0
  with pytest.raises(ValueError, match=r"unknown evaluation metrics \['fdi'\]"):
    evaluation.evaluate_during_training(config, model, restored.state.ema_params,
                                     jax.random.PRNGKey(0), metrics=["fdi"])
