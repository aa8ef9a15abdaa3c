"""jaxdiff.models.load_pretrained against PyTorch: committed fixtures made by
benchmarks/make_pretrained_fixtures.py in the peer environment (no torch needed here)."""

import importlib.util
import json
import os
import pickle
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxdiff import images as images_lib
from jaxdiff import samplers, schedules
from jaxdiff.models import DiT, load_openai_unet, load_pretrained
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.diffusers_unet import DiffusersUNet2D
from jaxdiff.models.diffusers_scheduler import (find_scheduler_config,
                                                schedule_from_scheduler_config)
from jaxdiff.models.pretrained import (CONVERSION_COMMAND, WEIGHTS_FILE, PretrainedError,
                                       read_safetensors)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from fixture_weights import draw_weights  # noqa: E402  (NumPy only, shared with the script)
# Tolerance: 1e-4 of the output's largest magnitude (float32, different summation orders);
# the deviations measured are about 1e-6 of it (README, "Pretrained weights").
RELATIVE = 1e-4


def _assert_matches(got, reference):
  scale = float(np.abs(reference).max())
  np.testing.assert_allclose(np.asarray(got), reference, rtol=RELATIVE, atol=RELATIVE * scale)


def _labels(io):
  return None if "y" not in io else jnp.asarray(io["y"], jnp.int32)


@pytest.mark.parametrize("name,cls", [("unet_ddpm_legacy", DiffusersUNet2D),
                                      ("unet_adm", DiffusersUNet2D),
                                      ("unet_variants", DiffusersUNet2D), ("dit", DiT)])
def test_denoisers_match_pytorch(name, cls):
  module, variables = load_pretrained(os.path.join(FIXTURES, name))
  assert isinstance(module, cls)
  io = read_safetensors(os.path.join(FIXTURES, name, "io.safetensors"))
  out = module.apply(variables, io["x"], jnp.asarray(io["t"], jnp.int32), _labels(io))
  _assert_matches(out, io["out"])


def _check_autoencoder(folder):
  module, variables = load_pretrained(folder)
  assert isinstance(module, AutoencoderKL)
  io = read_safetensors(os.path.join(folder, "io.safetensors"))
  mean, logvar = module.apply(variables, io["x"], method=module.encode)
  _assert_matches(mean, io["mean"])
  _assert_matches(logvar, io["logvar"])
  _assert_matches(module.apply(variables, io["z"], method=module.decode), io["decoded"])
  _assert_matches(module.apply(variables, io["x"]), io["out"])


def test_autoencoder_matches_pytorch():
  _check_autoencoder(os.path.join(FIXTURES, "vae_legacy"))


@pytest.mark.skipif(not os.environ.get("JAXDIFF_PARITY_DIR"),
                    reason="set JAXDIFF_PARITY_DIR to the folder written by "
                           "make_pretrained_fixtures.py --full")
def test_full_size_models_match_pytorch():
  """The published checkpoints' configurations, full size (not in the repository)."""
  root = os.environ["JAXDIFF_PARITY_DIR"]
  for name in sorted(os.listdir(root)):
    folder = os.path.join(root, name)
    io = read_safetensors(os.path.join(folder, "io.safetensors"))
    if "z" in io:
      _check_autoencoder(folder)
      continue
    module, variables = load_pretrained(folder)
    out = module.apply(variables, io["x"], jnp.asarray(io["t"], jnp.int32), _labels(io))
    _assert_matches(out, io["out"])


def test_imported_unet_drives_a_sampler():
  """An imported model is a model_fn for every sampler: a 4-step DDIM chain through it
  equals the same chain through the module called step by step."""
  module, variables = load_pretrained(os.path.join(FIXTURES, "unet_ddpm_legacy"))
  schedule = schedules.make_schedule("linear", 1000)
  model_fn = jax.tree_util.Partial(module.apply, variables)
  x_T = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  got = samplers.ddim(model_fn, schedule, jax.random.PRNGKey(1), x_T.shape, num_steps=4,
                      x_T=x_T, clip_denoised=False)
  x = x_T
  steps = schedules.space_timesteps(1000, "ddim4")[::-1]
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  for i, t in enumerate(steps):
    eps = np.asarray(module.apply(variables, x, jnp.full((2,), t)), np.float64)
    x0 = (np.asarray(x) - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    prev = abar[steps[i + 1]] if i + 1 < len(steps) else 1.0
    x = jnp.asarray(np.sqrt(prev) * x0 + np.sqrt(1 - prev) * eps, jnp.float32)
  np.testing.assert_allclose(got, x, atol=2e-4)


@pytest.mark.parametrize("name", ["openai_guided", "openai_improved"])
def test_openai_unets_match_pytorch(name, tmp_path):
  """guided-diffusion's U-Net (new attention order, residual resampling, labels) and
  improved-diffusion's layout (legacy order, convolutional resampling), with flags given
  as in their READMEs."""
  with open(os.path.join(FIXTURES, name, "spec.json")) as f:
    spec = json.load(f)
  path = str(tmp_path / "model.safetensors")
  save_file(draw_weights(spec["seed"], spec["tensors"]), path)
  flags = " ".join(f"--{k} {v}" for k, v in spec["flags"].items())
  module, variables = load_openai_unet(path, flags)
  io = read_safetensors(os.path.join(FIXTURES, name, "io.safetensors"))
  out = module.apply(variables, io["x"], jnp.asarray(io["t"], jnp.int32), _labels(io))
  _assert_matches(out, io["out"])


def test_openai_bad_input(tmp_path):
  with pytest.raises(PretrainedError, match="never unpickles"):
    load_openai_unet(tmp_path / "model.pt", "--image_size 64")
  with pytest.raises(PretrainedError, match=r"unknown OpenAI U-Net flag\(s\) \['num_chanels'\]"):
    load_openai_unet(tmp_path / "model.safetensors", "--num_chanels 64")


# --- safety and bad input ---------------------------------------------------------------------

class _Trap:
  """Unpickling this creates the file `path`: evidence that a pickle was loaded."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


def test_pickles_are_refused_unopened(tmp_path):
  marker = tmp_path / "unpickled"
  folder = tmp_path / "model"
  folder.mkdir()
  shutil.copy(os.path.join(FIXTURES, "unet_variants", "config.json"), folder)
  for name in ("diffusion_pytorch_model.bin", "model.pt"):
    with open(folder / name, "wb") as f:
      pickle.dump(_Trap(str(marker)), f)
  with pytest.raises(PretrainedError, match="never unpickles") as error:
    load_pretrained(folder)
  assert CONVERSION_COMMAND in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(PretrainedError, match="model.pt.*never unpickles"):
    load_pretrained(folder / "model.pt")
  assert not marker.exists()


@pytest.fixture
def model_folder(tmp_path):
  """A writable copy of the unet_variants fixture; returns (folder, config, tensors)."""
  folder = tmp_path / "unet"
  shutil.copytree(os.path.join(FIXTURES, "unet_variants"), folder)
  with open(folder / "config.json") as f:
    config = json.load(f)
  return folder, config, read_safetensors(folder / WEIGHTS_FILE)


def _write(folder, config=None, tensors=None):
  if config is not None:
    with open(folder / "config.json", "w") as f:
      json.dump(config, f)
  if tensors is not None:
    save_file(tensors, str(folder / WEIGHTS_FILE))


@pytest.mark.parametrize("change,message", [
    (dict(_class_name="UNet2DConditionModel"), "_class_name='UNet2DConditionModel'"),
    (dict(down_block_types=["SkipDownBlock2D", "DownBlock2D"]),
     r"down_block_types\[0\]='SkipDownBlock2D' is not a supported block type"),
    (dict(time_embedding_type="fourier"), "time_embedding_type='fourier' is not supported"),
    (dict(cross_attention_dim=768), r"unsupported key\(s\) \['cross_attention_dim'\]"),
])
def test_unsupported_configs(model_folder, change, message):
  folder, config, _ = model_folder
  _write(folder, config={**config, **change})
  with pytest.raises(PretrainedError, match=message):
    load_pretrained(folder)


def test_missing_extra_and_misshaped_tensors(model_folder):
  folder, _, tensors = model_folder
  name = "down_blocks.0.attentions.0.to_q.weight"
  _write(folder, tensors={k: v for k, v in tensors.items() if k != name})
  with pytest.raises(PretrainedError, match=rf"missing tensor '{name}' \(shape \(8, 8\)\)"):
    load_pretrained(folder)
  _write(folder, tensors={**tensors, "extra.weight": np.zeros(3, np.float32)})
  with pytest.raises(PretrainedError, match="unexpected tensor 'extra.weight'"):
    load_pretrained(folder)
  _write(folder, tensors={**tensors, "conv_in.weight": np.zeros((8, 2, 5, 5), np.float32)})
  with pytest.raises(PretrainedError,
                     match=r"tensor 'conv_in.weight' has shape \(8, 2, 5, 5\).*\(8, 2, 3, 3\)"):
    load_pretrained(folder)


def test_dit_blocks_must_share_their_embedders(tmp_path):
  folder = tmp_path / "dit"
  shutil.copytree(os.path.join(FIXTURES, "dit"), folder)
  tensors = read_safetensors(folder / WEIGHTS_FILE)
  name = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"
  tensors[name] = tensors[name] + 1.0
  _write(folder, tensors=tensors)
  with pytest.raises(PretrainedError, match=f"tensor '{name}' differs"):
    load_pretrained(folder)


def test_missing_files(tmp_path):
  with pytest.raises(PretrainedError, match="no config.json"):
    load_pretrained(tmp_path)
  shutil.copy(os.path.join(FIXTURES, "dit", "config.json"), tmp_path)
  with pytest.raises(PretrainedError, match=f"no {WEIGHTS_FILE}"):
    load_pretrained(tmp_path)


# --- scheduler configs ------------------------------------------------------------------------

def test_scheduler_configs_match_diffusers_betas():
  with open(os.path.join(FIXTURES, "schedulers.json")) as f:
    configs = json.load(f)
  betas = read_safetensors(os.path.join(FIXTURES, "schedulers.safetensors"))
  assert set(configs) == {"linear", "linear_500", "scaled_linear", "squaredcos_cap_v2",
                          "sigmoid"}
  for name, config in configs.items():
    schedule, options = schedule_from_scheduler_config(config)
    np.testing.assert_allclose(schedule.betas, betas[name], rtol=1e-6, err_msg=name)
    assert options == {"prediction": "eps", "variance": "fixed_small", "clip_denoised": True}
  _, options = schedule_from_scheduler_config(
      {"prediction_type": "v_prediction", "variance_type": "learned_range",
       "clip_sample": False})
  assert options == {"prediction": "v", "variance": "learned_range", "clip_denoised": False}
  with pytest.raises(PretrainedError, match="beta_schedule='exp'"):
    schedule_from_scheduler_config({"beta_schedule": "exp"})


def test_find_scheduler_config(tmp_path):
  model = tmp_path / "pipeline" / "unet"
  model.mkdir(parents=True)
  assert find_scheduler_config(model) is None
  (tmp_path / "pipeline" / "scheduler").mkdir()
  (tmp_path / "pipeline" / "scheduler" / "scheduler_config.json").write_text("{}")
  assert find_scheduler_config(model) == str(tmp_path / "pipeline" / "scheduler" /
                                             "scheduler_config.json")
  (model / "scheduler_config.json").write_text("{}")
  assert find_scheduler_config(model) == str(model / "scheduler_config.json")


def test_sample_py_samples_an_imported_unet_with_its_scheduler(tmp_path, capsys):
  """`sample.py --pretrained DIR` runs the one generation path on an imported model: its
  DDIM images equal samplers.ddim on the same model, schedule and starting noise."""
  folder = tmp_path / "unet"
  shutil.copytree(os.path.join(FIXTURES, "unet_ddpm_legacy"), folder)
  with open(os.path.join(FIXTURES, "schedulers.json")) as f:
    (folder / "scheduler_config.json").write_text(json.dumps(json.load(f)["linear"]))
  sample = _load_sample_py()
  code = sample.main(["--pretrained", str(folder), "--sampler", "ddim", "--num_steps", "5",
                      "--num_samples", "3", "--seed", "4", "--out", str(tmp_path),
                      "--name", "imported"])
  assert code == 0, capsys.readouterr().err
  with np.load(tmp_path / "imported.npz") as data:
    got = data["images"]
  module, variables = load_pretrained(folder)
  noise_key, chain_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(4), 0))
  x_T = jax.random.normal(noise_key, (3, 16, 16, 3))
  expected = samplers.ddim(jax.tree_util.Partial(module.apply, variables),
                           schedules.make_schedule("linear", 1000), chain_key, x_T.shape,
                           num_steps=5, x_T=x_T)
  np.testing.assert_array_equal(got, images_lib.to_uint8(np.asarray(expected)))
  assert sample.main(["--pretrained", str(folder), "--workdir", str(tmp_path)]) == 2
  (folder / "scheduler_config.json").unlink()
  assert sample.main(["--pretrained", str(folder)]) == 2
  assert "no scheduler_config.json" in capsys.readouterr().err


def _load_sample_py():
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "sample.py")
  spec = importlib.util.spec_from_file_location("sample_pretrained", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["sample_pretrained"] = module
  spec.loader.exec_module(module)
  return module
