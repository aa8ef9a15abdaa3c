"""Latent diffusion end to end: an autoencoder run, a caption-conditioned latent run on its
codes, sample.py and `python -m jaxdiff.evaluate` on them, and the one-line refusals.

Both runs come from `jaxdiff.job.trainer.train` (2 steps of tiny models on the 8x8 digits,
f = 2, 2 latent channels), so their workdirs are exactly what `python train.py` leaves.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxdiff import evaluate
from jaxdiff.config import builders, schema, validation
from jaxdiff.evaluation.datasets import load_images
from jaxdiff.job import checkpoints, latents, trainer
from jaxdiff.job import evaluation as metrics

# The two module fixtures train (and compile) an autoencoder and a latent model: about a
# minute each on an idle 2-core CPU, shared by every test here.
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = dict(num_steps=2, batch_size=8, checkpoint_every=2, warmup_steps=1,
             async_checkpointing=False)


def _load_module(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


sample = _load_module("sample_latent_cli", ROOT / "sample.py")


def _autoencoder_config():
  config = schema.load_config_file(ROOT / "configs" / "fashion_autoencoder.py")
  config.model.update(block_out_channels=(4, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=2,
                      norm_num_groups=2)
  config.data.update(source="tfds", name="sklearn_digits", idx_dir=None, image_size=8)
  config.autoencoder.update(disc_weight=0.5, disc_channels=4, disc_layers=1,
                            num_reconstructions=4)
  config.train.update(**TRAIN)
  return config


def _latent_config(autoencoder_workdir):
  config = schema.load_config_file(ROOT / "configs" / "fashion_latent.py")
  config.model.update(base_channels=8, channel_mult=(1,), num_head_channels=4, num_groups=4,
                      context_dim=8, transformer_resolutions=(4,))
  config.conditioner.update(captions="digits", width=8, depth=1, num_heads=2)
  config.autoencoder.update(workdir=autoencoder_workdir, latent_channels=2, scale_examples=64)
  config.data.update(source="tfds", name="sklearn_digits", idx_dir=None, image_size=8)
  config.diffusion.update(num_timesteps=50)
  config.train.update(**TRAIN)
  config.sample.update(num_samples=4, num_steps=2)
  return config


@pytest.fixture(scope="module")
def autoencoder_workdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("autoencoder")
  trainer.train(_autoencoder_config(), workdir=path)
  return str(path)


@pytest.fixture(scope="module")
def latent_workdir(tmp_path_factory, autoencoder_workdir):
  path = tmp_path_factory.mktemp("latent")
  trainer.train(_latent_config(autoencoder_workdir), workdir=path)
  return str(path)


def test_autoencoder_run_saves_reconstruction_grids_and_its_discriminator(autoencoder_workdir):
  grid = np.asarray(Image.open(os.path.join(autoencoder_workdir, "reconstructions",
                                            "step_00000002.png")))
  assert grid.std() > 0
  config, restored = checkpoints.load_workdir(autoencoder_workdir)
  assert config.model.name == "autoencoder_kl"
  assert set(restored.state.params) == {"autoencoder", "discriminator"}


def test_latent_run_records_its_autoencoder_and_unit_variance_scale(autoencoder_workdir,
                                                                      latent_workdir):
  config = checkpoints.read_config(latent_workdir)
  section = config.autoencoder
  assert section.workdir == os.path.abspath(autoencoder_workdir)
  assert (section.step, section.latent_channels, section.downsampling_factor) == (2, 2, 2)
  assert builders.model_input_shape(config) == (4, 4, 2)
  coder = latents.load_coder(config, jax.sharding.Mesh(jax.devices(), ("data",)))
  images, _ = load_images(config.data, max_examples=64)
  scaled = np.asarray(coder.encode(images, jax.random.PRNGKey(7)))
  # 2048 values, drawn with another key than the measurement's: the std's relative standard
  # error is about 1 / sqrt(2 * 2048) = 1.6% plus the posterior noise's share; 10% margin.
  assert abs(scaled.std() - 1.0) < 0.1
  _, restored = checkpoints.load_workdir(latent_workdir)
  assert {"denoiser", "text_encoder"} == set(restored.state.params)


def _sample(argv, capsys):
  code = sample.main(argv)
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_sample_py_decodes_prompted_latents_to_images(latent_workdir, tmp_path, capsys):
  code, _, err = _sample(["--workdir", latent_workdir, "--prompt", "Dark seven.", "--prompt",
                          "one", "--num_samples", "3", "--guidance_scale", "3",
                          "--out", str(tmp_path), "--name", "s"], capsys)
  assert code == 0, err
  with np.load(tmp_path / "s.npz") as data:
    assert data["images"].shape == (3, 8, 8, 1) and data["images"].dtype == np.uint8
  # SDEdit and inpainting run in latent space from an encoded guide image.
  Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "guide.png")
  Image.fromarray(np.repeat(np.array([255, 0], np.uint8), 32).reshape(8, 8)).save(
      tmp_path / "mask.png")
  code, _, err = _sample(["--workdir", latent_workdir, "--image", str(tmp_path / "guide.png"),
                          "--mask", str(tmp_path / "mask.png"), "--sampler", "ddim",
                          "--num_samples", "2", "--out", str(tmp_path)], capsys)
  assert code == 0, err


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "red seven"], "--prompt: unknown word 'red' in 'red seven'; the digits"),
    (["--prompt", "one", "--labels", "1"], "give --prompt or --labels, not both"),
])
def test_bad_prompts_are_one_line_errors(latent_workdir, capsys, argv, message):
  code, _, err = _sample(["--workdir", latent_workdir, *argv], capsys)
  assert code == 2 and message in err and err.count("\n") == 1


def test_latent_run_refuses_an_autoencoder_with_other_latent_channels(autoencoder_workdir,
                                                                        tmp_path):
  config = _latent_config(autoencoder_workdir)
  config.autoencoder.latent_channels = 3
  with pytest.raises(ValueError, match="latent_channels=3, but the autoencoder in .* has "
                                       "latent_channels=2") as info:
    trainer.train(config, workdir=tmp_path / "run")
  assert "\n" not in str(info.value) and not (tmp_path / "run").exists()


def test_missing_or_wrong_autoencoder_workdirs_are_one_line_errors(
    autoencoder_workdir, latent_workdir, tmp_path):
  cases = [(None, "config.autoencoder.workdir is missing"),
           (str(tmp_path / "nothing"), "has no config.json: not a train.py run"),
           (latent_workdir, "is a 'unet' run, not an autoencoder")]
  for workdir, message in cases:
    config = _latent_config(workdir)
    with pytest.raises(ValueError, match=message) as info:
      trainer.train(config, workdir=tmp_path / "run")
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
  # Resuming a latent run with another autoencoder (a copy elsewhere) is refused.
  other = shutil.copytree(autoencoder_workdir, tmp_path / "other_autoencoder")
  resumed = shutil.copytree(latent_workdir, tmp_path / "resumed")
  with pytest.raises(ValueError, match="but this run was trained on the latents of"):
    trainer.train(_latent_config(str(other)), workdir=resumed)


def test_sampling_refuses_a_recorded_autoencoder_checkpoint_that_is_gone(
    autoencoder_workdir, latent_workdir, tmp_path, capsys):
  autoencoder = shutil.copytree(autoencoder_workdir, tmp_path / "autoencoder")
  run = shutil.copytree(latent_workdir, tmp_path / "run")
  config = json.loads((run / "config.json").read_text())
  config["autoencoder"]["workdir"] = str(autoencoder)
  (run / "config.json").write_text(json.dumps(config))
  shutil.rmtree(autoencoder / "checkpoints" / "2")
  code, _, err = _sample(["--workdir", str(run), "--num_samples", "1"], capsys)
  assert code == 2 and "has no checkpoint 2 (steps: [])" in err and err.count("\n") == 1


def test_conditioner_width_must_match_the_context_width(autoencoder_workdir):
  config = _latent_config(autoencoder_workdir)
  config.model.context_dim = 6
  with pytest.raises(ValueError, match="context_dim=6, but the text encoder's width is "
                                       "config.conditioner.width=8"):
    validation.validate_config(config, num_devices=1)


def test_evaluate_reports_reconstruction_psnr_and_prompt_accuracy(
    autoencoder_workdir, latent_workdir, tmp_path, capsys):
  out, cache = tmp_path / "ae.json", str(tmp_path / "cache")
  assert evaluate.main(["--workdir", autoencoder_workdir, "--metrics",
                        "reconstruction,classifier_fd", "--bpd_examples", "16",
                        "--cache_dir", cache, "--out", str(out)]) == 0
  results = json.loads(out.read_text())
  assert results["reconstruction_examples"] == 16 and np.isfinite(results["psnr"])
  assert results["latent_shape"] == [4, 4, 2] and len(results["latent_channel_std"]) == 2
  # The floor is the distance of the same 16 real test images; a 2-step autoencoder's
  # reconstructions are far from the data, so they score worse than it.
  config = checkpoints.read_config(autoencoder_workdir)
  reference = metrics.classifier_reference(config.data, cache_dir=cache)
  real, _ = load_images(config.data, split="test", max_examples=16)
  assert results["data_classifier_fd"] == pytest.approx(
      metrics.classifier_frechet_distance(reference, real), rel=1e-6)
  assert results["reconstruction_classifier_fd"] > results["data_classifier_fd"]
  out = tmp_path / "latent.json"
  assert evaluate.main(["--workdir", latent_workdir, "--metrics", "prompt_accuracy",
                        "--guidance_scale", "0,3", "--num_samples", "10",
                        "--cache_dir", cache, "--out", str(out)]) == 0
  accuracy = json.loads(out.read_text())["prompt_accuracy"]
  assert set(accuracy) == {"0.0", "3.0"} and all(0 <= v <= 1 for v in accuracy.values())
  assert evaluate.main(["--workdir", latent_workdir, "--metrics", "bpd"]) == 2
  assert "diffuses latents" in capsys.readouterr().err
