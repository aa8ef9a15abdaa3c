"""Tests for jaxdiff.models.DiT (Peebles & Xie 2023) and choosing it by config.model.name."""

import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.config import builders, validation
from jaxdiff.config.schema import base_config, config_from_json, load_config_file, model_config
from jaxdiff.job import checkpoints
from jaxdiff.models import DIT_PRESETS, DiT, UNet, sinusoidal_embedding
from jaxdiff.models.embeddings import sincos_position_embedding_2d

TINY = dict(patch_size=2, hidden_size=16, depth=2, num_heads=2, num_classes=3)
X_SHAPE = (2, 8, 8, 3)


def _num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _abstract_init(model, x_shape, *, labels=True):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  t = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, t if labels else None)


def _random_params(model, x_shape, seed=0):
  """N(0, 1/fan_in) kernels, N(0, 0.1) biases and tables: zero-initialized layers made live."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key == "kernel":
      fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) != 3 else leaf.shape[0]
      if path[-2].key == "proj_out":
        fan_in = leaf.shape[0] * leaf.shape[1]
      return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), jnp.float32)
    return jnp.asarray(0.1 * rng.standard_normal(leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _abstract_init(model, x_shape))


# --- the paper's numbers ---------------------------------------------------------------------

# Parameters of the class-conditional, learned-sigma models on 32x32x4 latents: the rounded
# trainable counts of S, B, L and XL (33M, 130M, 458M, 675M, as tabulated by Ma et al. 2024,
# SiT, Table 1), and DiT-XL/2's exact count printed by the official training script
# (675,129,632, which includes the fixed 256 x 1152 position table, a constant here).
@pytest.mark.parametrize("name,millions", [("DiT-S/2", 33), ("DiT-B/2", 130),
                                           ("DiT-L/2", 458), ("DiT-XL/2", 675)])
def test_preset_parameter_counts(name, millions):
  preset = DIT_PRESETS[name]
  model = DiT(**preset, num_classes=1000, learn_sigma=True)
  trainable = _num_params(_abstract_init(model, (1, 32, 32, 4)))
  fixed_positions = (32 // preset["patch_size"]) ** 2 * preset["hidden_size"]
  assert round(trainable / 1e6) == millions
  if name == "DiT-XL/2":
    assert trainable + fixed_positions == 675_129_632


# Gflops of one forward pass at I = 32 (Peebles & Xie 2023, Table 4: p = 4; XL/2 in Table
# 4's text and Fig. 2). XLA counts a multiply-add as 2 flops, the paper as 1.
@pytest.mark.parametrize("name,gflops", [("DiT-S/4", 1.4), ("DiT-B/4", 5.6), ("DiT-L/4", 19.7),
                                         ("DiT-XL/4", 29.1), ("DiT-XL/2", 118.6)])
def test_preset_gflops(name, gflops):
  model = DiT(**DIT_PRESETS[name], num_classes=1000, learn_sigma=True)
  x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  cost = jax.jit(model.apply).lower(_abstract_init(model, x.shape), x, t, t).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  # The table rounds to 0.1 Gflops; XL/2's 118.6 is matched to 0.5%.
  assert cost["flops"] / 2e9 == pytest.approx(gflops, abs=0.05, rel=0.005)


def test_presets_cover_sizes_and_patches():
  assert sorted(DIT_PRESETS) == sorted(f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL")
                                       for p in (2, 4, 8))


# --- embeddings -------------------------------------------------------------------------------

def test_position_embedding_matches_formula():
  """Token (i, j) of an H x W grid: [sin/cos of j * w_k, sin/cos of i * w_k], float64 loops."""
  height, width, dim = 3, 5, 16
  got = sincos_position_embedding_2d(height, width, dim)
  m = dim // 4
  for i in range(height):
    for j in range(width):
      row = got[i * width + j]
      for k in range(m):
        w = 10_000.0 ** (-k / m)
        expected = [math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)]
        np.testing.assert_allclose(row[[k, m + k, 2 * m + k, 3 * m + k]], expected, atol=1e-6)


def test_timestep_embedding_variants():
  """cos-first with shift 0 is ADM's / DiT's timestep_embedding: f_i = P**(-i / half)."""
  t = jnp.array([0.0, 3.0, 999.0])
  got = sinusoidal_embedding(t, 8, flip_sin_to_cos=True, freq_shift=0)
  freqs = 10_000.0 ** (-np.arange(4) / 4)
  args = np.asarray(t, np.float64)[:, None] * freqs
  np.testing.assert_allclose(got, np.concatenate([np.cos(args), np.sin(args)], 1), atol=1e-4)


# --- the module ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
  model = DiT(**TINY)
  return model, _random_params(model, X_SHAPE)


@pytest.fixture(scope="module")
def inputs():
  x = jax.random.normal(jax.random.PRNGKey(1), X_SHAPE)
  return x, jnp.array([3, 400]), jnp.array([0, 2])


def test_initialization_is_identity_then_zero(inputs):
  """adaLN-Zero: every block starts as the identity and the output layer at zero."""
  model = DiT(**TINY)
  x, t, y = inputs
  params = model.init(jax.random.PRNGKey(0), x, t, y)
  out, state = model.apply(params, x, t, y, capture_intermediates=True)
  np.testing.assert_array_equal(out, 0.0)
  hidden = state["intermediates"]
  tokens = hidden["patch_embed"]["__call__"][0].reshape(2, 16, 16)
  tokens = tokens + sincos_position_embedding_2d(4, 4, 16)
  np.testing.assert_allclose(hidden["block0"]["__call__"][0], tokens, atol=1e-6)
  np.testing.assert_array_equal(hidden["block1"]["__call__"][0], hidden["block0"]["__call__"][0])


def test_shapes_and_learned_sigma(tiny, inputs):
  model, params = tiny
  x, t, y = inputs
  chex.assert_shape(model.apply(params, x, t, y), X_SHAPE)
  sigma_model = DiT(**TINY, learn_sigma=True, out_channels=1)
  out = sigma_model.apply(_random_params(sigma_model, X_SHAPE), x, t, y)
  chex.assert_shape(out, X_SHAPE[:3] + (2,))
  chex.assert_tree_all_finite(out)


def test_conditioning(tiny, inputs):
  """The output depends on t and y; y=None is the null label num_classes."""
  model, params = tiny
  x, t, y = inputs
  out = model.apply(params, x, t, y)
  assert not np.allclose(out, model.apply(params, x, t + 1, y), atol=1e-4)
  assert not np.allclose(out, model.apply(params, x, t, (y + 1) % 3), atol=1e-4)
  np.testing.assert_array_equal(model.apply(params, x, t),
                                model.apply(params, x, t, jnp.full((2,), 3)))


def test_patches_map_to_their_pixels(inputs):
  """Without blocks, the token of patch (i, j) decodes to exactly that patch's pixels: the
  patchify and unpatchify layouts agree."""
  model = DiT(**{**TINY, "depth": 0})
  params = _random_params(model, X_SHAPE)
  x, t, y = inputs
  delta = model.apply(params, x.at[:, 2:4, 4:6, :].add(1.0), t, y) - model.apply(params, x, t, y)
  changed = np.abs(np.asarray(delta)).max(axis=(0, 3)) > 1e-6
  expected = np.zeros((8, 8), bool)
  expected[2:4, 4:6] = True
  np.testing.assert_array_equal(changed, expected)


def test_bad_inputs(tiny, inputs):
  model, params = tiny
  x, t, y = inputs
  with pytest.raises(ValueError, match="multiple of patch_size=2"):
    model.apply(params, x[:, :7, :7], t, y)
  with pytest.raises(ValueError, match=r"t must have shape \[B\]"):
    model.apply(params, x, t[:1], y)
  with pytest.raises(ValueError, match="num_heads=3"):
    DiT(**{**TINY, "num_heads": 3}).init(jax.random.PRNGKey(0), x, t, y)


# --- config.model.name -----------------------------------------------------------------------

def test_config_chooses_the_model():
  unet_config = load_config_file("configs/digits.py")
  assert unet_config.model.name == "unet"
  assert isinstance(builders.build_model(unet_config), UNet)
  UNet(**unet_config.model)  # The section stays exactly UNet's keyword arguments.
  dit_config = load_config_file("configs/digits_dit.py")
  validation.validate_config(dit_config, num_devices=1)
  model = builders.build_model(dit_config)
  assert isinstance(model, DiT) and model.hidden_size == dit_config.model.hidden_size
  restored = config_from_json(dit_config.to_json())
  assert restored.model.to_dict() == dit_config.model.to_dict()


def test_config_rejects_mismatched_model_section():
  config = base_config()
  config.model.name = "dit"
  with pytest.raises(ValueError, match="holds the fields of 'unet'"):
    validation.validate_config(config, num_devices=1)
  config.model.name = "vit"
  with pytest.raises(ValueError, match=r"config.model.name='vit' is not one of"):
    validation.validate_config(config, num_devices=1)
  with pytest.raises(ValueError, match="is not one of"):
    model_config("vit")


def test_train_py_trains_and_restores_a_dit(tmp_path):
  """configs/digits_dit.py through train.py (a tiny DiT, 4 steps): checkpoint, saved
  config and samples; the workdir restores as a DiT."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds"))
  command = [sys.executable, os.path.join(root, "train.py"), "--config",
             os.path.join(root, "configs", "digits_dit.py"), f"--workdir={tmp_path / 'run'}",
             "--config.model.hidden_size=16", "--config.model.depth=1",
             "--config.model.num_heads=2", "--config.diffusion.num_timesteps=50",
             "--config.train.batch_size=8", "--config.train.num_steps=4",
             "--config.train.log_every=2", "--config.train.checkpoint_every=4",
             "--config.sample.num_samples=4"]
  out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  config, restored = checkpoints.load_workdir(tmp_path / "run")
  assert config.model.name == "dit" and restored.step == 4
  model = builders.build_model(config)
  assert isinstance(model, DiT) and model.hidden_size == 16
  x = jax.numpy.zeros((2, 8, 8, 1))
  chex.assert_shape(model.apply({"params": restored.state.ema_params}, x,
                                jax.numpy.array([0, 49])), x.shape)
