"""Tests for jaxdiff.models: the DDPM / ADM U-Net and its blocks.

Real initialization is slow to compile on CPU, so most tests take parameter shapes
from ``jax.eval_shape`` and fill them with random values: that also makes the
zero-initialized output layers non-zero, without which the network's output would
be identically zero and every dependence test trivially true or false.
"""

import math
import re

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxdiff.models import PRESETS, AttentionBlock, ResBlock, UNet, sinusoidal_embedding

# A tiny conditional model exercising every ADM extension: two levels (8x8, 4x4),
# attention at 4x4 with two heads, scale-shift norm, residual resampling, dropout.
TINY = dict(
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(4,),
    num_head_channels=4,
    num_groups=4,
    use_scale_shift_norm=True,
    resblock_updown=True,
    num_classes=3,
    dropout=0.5,
)
TINY_X_SHAPE = (2, 8, 8, 3)
TINY_Y = (0, 2)


def _num_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _param_shapes(model: UNet, x_shape, *, y=None):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  t = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), x, t, y)


def _random_params(model: UNet, x_shape, *, seed: int = 0, residual_scale: float = 1.0):
  """Random parameters, non-zero everywhere, without a (slow to compile) real init.

  Kernels are unit-gain normal (std 1 / sqrt(fan_in)); the kernels that DDPM
  initializes to zero (residual-branch outputs ``conv2`` / ``proj_out`` and
  ``conv_out``) are multiplied by ``residual_scale``. Norm scales are 1 + 0.1 N,
  biases and embeddings 0.1 N, so every parameter matters.
  """
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    layer, name = path[-2].key, path[-1].key
    if name == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
    elif name in ("bias", "embedding"):
      value = 0.1 * rng.standard_normal(leaf.shape)
    else:
      fan_in = leaf.shape[0] if layer in ("q", "k", "v") else math.prod(leaf.shape[:-1])
      value = rng.standard_normal(leaf.shape) / math.sqrt(fan_in)
      if layer in ("conv2", "proj_out", "conv_out"):
        value *= residual_scale
    return jnp.asarray(value, jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, _param_shapes(model, x_shape))


def _fast_rng():
  """Non-partitionable threefry: XLA:CPU compiles random bits for 4-D shapes (conv
  kernels, dropout masks) several times faster than with jax's partitionable
  default. Random values differ; the properties tested do not depend on them."""
  return jax.threefry_partitionable(False)


def _inputs(x_shape, *, seed: int = 1):
  x = jax.random.normal(jax.random.key(seed), x_shape)
  t = jnp.arange(x_shape[0], dtype=jnp.int32) * 7 + 3
  return x, t


# ---------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_matches_closed_form():
  # dim 6: half = 3 frequencies 10000 ** (-i / 2) = 1, 1e-2, 1e-4 (Ho et al.'s code).
  t = np.array([0.0, 1.0, 17.0, 999.0, 0.25])
  freqs = np.array([1.0, 1e-2, 1e-4])
  expected = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], 1)
  got = sinusoidal_embedding(jnp.asarray(t, jnp.float32), 6)
  chex.assert_shape(got, (5, 6))
  # float32 arguments up to ~1e3 carry absolute error ~1e3 * 6e-8 = 6e-5 at most.
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4)
  # integer timesteps embed exactly as the same float timesteps.
  chex.assert_trees_all_close(
      sinusoidal_embedding(jnp.array([0, 1, 17, 999]), 6), got[:4], atol=0
  )


@pytest.mark.parametrize("dim", [2, 7])
def test_sinusoidal_embedding_rejects_bad_dim(dim):
  with pytest.raises(ValueError, match=f"got {dim}"):
    sinusoidal_embedding(jnp.zeros(2), dim)


def test_sinusoidal_embedding_rejects_bad_t_shape():
  with pytest.raises(ValueError, match=r"\(2, 1\)"):
    sinusoidal_embedding(jnp.zeros((2, 1)), 8)


# ---------------------------------------------------------------- attention


def test_attention_block_matches_numpy_multihead_attention():
  block = AttentionBlock(num_head_channels=4, num_groups=2)
  batch, height, width, channels, heads = 2, 3, 2, 8, 2
  x = jax.random.normal(jax.random.key(0), (batch, height, width, channels))
  shapes = jax.eval_shape(block.init, jax.random.key(0), x)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  got = block.apply(params, x)

  # Independent derivation: GroupNorm (eps 1e-6) then per-head softmax(q k^T / sqrt(d)) v.
  p = params["params"]
  xn = np.asarray(x, np.float64).reshape(batch, height * width, 2, channels // 2)
  xn = (xn - xn.mean(axis=(1, 3), keepdims=True)) / np.sqrt(
      xn.var(axis=(1, 3), keepdims=True) + 1e-6
  )
  xn = xn.reshape(batch, height * width, channels) * p["norm"]["scale"] + p["norm"]["bias"]
  q, k, v = (
      np.einsum("bsc,chd->bshd", xn, p[n]["kernel"]) + p[n]["bias"] for n in "qkv"
  )
  logits = np.einsum("bshd,bthd->bhst", q, k) / np.sqrt(channels // heads)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bhst,bthd->bshd", weights, v)
  out = np.einsum("bshd,hdc->bsc", attended, p["proj_out"]["kernel"]) + p["proj_out"]["bias"]
  expected = np.asarray(x) + out.reshape(batch, height, width, channels)
  chex.assert_shape(got, x.shape)
  # float32 through unit-scale weights: relative rounding ~1e-6 per op, a few dozen ops.
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_heads=3), "num_heads=3"),
        (dict(num_head_channels=3), "num_head_channels=3"),
    ],
)
def test_attention_block_rejects_heads_not_dividing_channels(kw, match):
  with pytest.raises(ValueError, match=match):
    AttentionBlock(num_groups=2, **kw).init(jax.random.key(0), jnp.zeros((1, 2, 2, 8)))


# ---------------------------------------------------------------- residual block


def _np_group_norm(x, scale, bias, groups):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  g = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(
      g.var(axis=(1, 2, 4), keepdims=True) + 1e-6
  )
  return g.reshape(x.shape) * scale + bias


def _np_conv(x, kernel, bias):
  """Stride-1 'SAME' convolution, NHWC / HWIO, by summing shifted copies."""
  kh, kw = kernel.shape[:2]
  padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  height, width = x.shape[1:3]
  return sum(
      padded[:, i:i + height, j:j + width] @ kernel[i, j]
      for i in range(kh) for j in range(kw)
  ) + bias


@pytest.mark.parametrize("use_scale_shift_norm", [False, True])
def test_res_block_matches_numpy(use_scale_shift_norm):
  block = ResBlock(6, use_scale_shift_norm=use_scale_shift_norm, num_groups=2)
  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4))
  emb = jax.random.normal(jax.random.key(1), (2, 5))
  shapes = jax.eval_shape(block.init, jax.random.key(0), x, emb)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.5 * rng.standard_normal(s.shape), shapes)
  got = block.apply(jax.tree.map(jnp.float32, params), x, emb)

  # Independent derivation (Ho et al.'s resnet_block; Dhariwal & Nichol's AdaGN).
  p = params["params"]
  swish = lambda v: v / (1 + np.exp(-v))
  x64, emb64 = np.asarray(x, np.float64), np.asarray(emb, np.float64)
  h = swish(_np_group_norm(x64, p["norm1"]["scale"], p["norm1"]["bias"], 2))
  h = _np_conv(h, p["conv1"]["kernel"], p["conv1"]["bias"])
  e = (swish(emb64) @ p["emb_proj"]["kernel"] + p["emb_proj"]["bias"])[:, None, None]
  norm2 = lambda v: _np_group_norm(v, p["norm2"]["scale"], p["norm2"]["bias"], 2)
  h = norm2(h) * (1 + e[..., :6]) + e[..., 6:] if use_scale_shift_norm else norm2(h + e)
  h = _np_conv(swish(h), p["conv2"]["kernel"], p["conv2"]["bias"])
  expected = _np_conv(x64, p["skip"]["kernel"], p["skip"]["bias"]) + h
  chex.assert_shape(got, (2, 3, 4, 6))
  # float32 through O(1) weights and a dozen sums of <= 36 terms: ~1e-5 relative.
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- architecture


def _ddpm_param_count(*, ch, ch_mult, num_res_blocks, attn_resolutions, size, in_ch):
  """Closed-form count of Ho et al.'s ``diffusion_tf/models/unet.py::model``."""
  conv3 = lambda cin, cout: 9 * cin * cout + cout
  dense = lambda cin, cout: cin * cout + cout
  norm = lambda c: 2 * c
  temb = 4 * ch

  def resnet(cin, cout):
    shortcut = dense(cin, cout) if cin != cout else 0
    return norm(cin) + conv3(cin, cout) + dense(temb, cout) + norm(cout) + conv3(
        cout, cout
    ) + shortcut

  attn = lambda c: norm(c) + 4 * dense(c, c)  # q, k, v, proj_out
  total = dense(ch, temb) + dense(temb, temb) + conv3(in_ch, ch)
  skips, c = [ch], ch
  for level, mult in enumerate(ch_mult):
    for _ in range(num_res_blocks):
      total += resnet(c, ch * mult)
      c = ch * mult
      total += attn(c) if size in attn_resolutions else 0
      skips.append(c)
    if level != len(ch_mult) - 1:
      total += conv3(c, c)
      size //= 2
      skips.append(c)
  total += 2 * resnet(c, c) + attn(c)
  for level, mult in reversed(list(enumerate(ch_mult))):
    for _ in range(num_res_blocks + 1):
      total += resnet(c + skips.pop(), ch * mult)
      c = ch * mult
      total += attn(c) if size in attn_resolutions else 0
    if level != 0:
      total += conv3(c, c)
      size *= 2
  return total + norm(c) + conv3(c, in_ch)


def test_ddpm_cifar10_has_35_7m_parameters():
  shapes = _param_shapes(UNet(**PRESETS["ddpm_cifar10"]), (1, 32, 32, 3))
  count = _num_params(shapes)
  # Ho et al. 2020 (App. B) report 35.7M for the CIFAR-10 model.
  assert abs(count - 35.7e6) <= 0.1e6, count
  # and exactly the closed-form count of their reference code's layer list.
  assert count == _ddpm_param_count(
      ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), size=32,
      in_ch=3,
  )
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))


def test_small_ddpm_config_matches_closed_form_count():
  model = UNet(
      base_channels=16, channel_mult=(1, 2, 3), num_res_blocks=2,
      attention_resolutions=(12, 3), num_groups=4,
  )
  assert _num_params(_param_shapes(model, (1, 12, 12, 2))) == _ddpm_param_count(
      ch=16, ch_mult=(1, 2, 3), num_res_blocks=2, attn_resolutions=(12, 3), size=12,
      in_ch=2,
  )


def test_adm_imagenet64_has_296m_parameters():
  model = UNet(**PRESETS["adm_imagenet64_cond"])
  count = _num_params(_param_shapes(model, (1, 64, 64, 3), y=jnp.zeros((1,), jnp.int32)))
  # Dhariwal & Nichol 2021 (appendix hyperparameter table) list 296M for ImageNet
  # 64x64, rounded; ours has one more label-embedding row (the null label, 768).
  assert abs(count - 296e6) <= 0.5e6, count


@pytest.mark.parametrize(
    "kw, x_shape, out_channels",
    [
        (dict(channel_mult=(1, 2)), (2, 8, 8, 1), 1),
        (dict(channel_mult=(1, 2, 2), attention_resolutions=(7,)), (1, 28, 28, 1), 1),
        (dict(channel_mult=(1, 2, 2), attention_resolutions=(4,)), (3, 16, 12, 3), 3),
        (dict(channel_mult=(1, 2), learn_sigma=True), (2, 8, 8, 3), 6),
        (dict(channel_mult=(1,), attention_resolutions=(6,), out_channels=2), (1, 6, 10, 4), 2),
        (dict(channel_mult=(1, 2), out_channels=2, learn_sigma=True), (1, 8, 8, 3), 4),
    ],
)
def test_output_shape(kw, x_shape, out_channels):
  config = dict(base_channels=8, num_res_blocks=1, num_groups=4, attention_resolutions=(4,))
  model = UNet(**{**config, **kw})
  params = _param_shapes(model, x_shape)
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  t = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
  out = jax.eval_shape(model.apply, params, x, t)
  chex.assert_shape(out, (*x_shape[:3], out_channels))
  assert out.dtype == jnp.float32


def test_presets_build_from_ml_collections_with_lists_and_string_dtype():
  for name, x_shape in [("small_8", (1, 8, 8, 1)), ("small_28", (1, 28, 28, 1))]:
    config = ml_collections.ConfigDict(PRESETS[name])
    config.dtype = "bfloat16"
    model = UNet(**config)
    # ConfigDict hands sequences back as tuples; plain dicts may carry lists.
    lists = UNet(**{**config, "channel_mult": list(config.channel_mult),
                    "attention_resolutions": list(config.attention_resolutions)})
    assert _num_params(_param_shapes(lists, x_shape)) == _num_params(
        _param_shapes(model, x_shape)
    )
    params = _param_shapes(model, x_shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    out = jax.eval_shape(model.apply, params, x, jnp.zeros(x_shape[:1], jnp.int32))
    chex.assert_shape(out, x_shape)
    assert out.dtype == jnp.float32


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("size, levels", [((30, 30), 4), ((32, 20), 4), ((9, 8), 2)])
def test_input_size_not_divisible_raises(size, levels):
  model = UNet(base_channels=8, channel_mult=(1, 2, 2, 2)[:levels], num_res_blocks=1,
               attention_resolutions=(), num_groups=4)
  with pytest.raises(ValueError, match=rf"{size[0]}x{size[1]}.*{levels} levels"):
    _param_shapes(model, (1, *size, 3))


@pytest.mark.parametrize(
    "kw, x_shape, t_shape, y, match",
    [
        (dict(attention_resolutions=(16,)), (1, 8, 8, 1), (1,), None, r"\[16\].*8x8"),
        (dict(), (1, 8, 8, 1), (1, 1), None, r"t must have shape"),
        (dict(), (8, 8, 1), (1,), None, r"NHWC"),
        (dict(), (1, 8, 8, 1), (1,), jnp.zeros((1,), jnp.int32), r"num_classes=None"),
        (dict(num_classes=2), (2, 8, 8, 1), (2,), jnp.zeros((3,), jnp.int32), r"y must"),
        (dict(num_groups=3), (1, 8, 8, 1), (1,), None, r"num_groups=3"),
        (dict(num_head_channels=3), (1, 8, 8, 1), (1,), None, r"num_head_channels=3"),
        (dict(dtype="int32"), (1, 8, 8, 1), (1,), None, r"'int32'"),
        (dict(dtype="float31"), (1, 8, 8, 1), (1,), None, r"'float31'"),
        (dict(channel_mult=()), (1, 8, 8, 1), (1,), None, r"channel_mult"),
        (dict(num_res_blocks=0), (1, 8, 8, 1), (1,), None, r"num_res_blocks"),
        (dict(dropout=1.0), (1, 8, 8, 1), (1,), None, r"dropout"),
        (dict(base_channels=5), (1, 8, 8, 1), (1,), None, r"base_channels"),
        (dict(attention_implementation="flash"), (1, 8, 8, 1), (1,), None, r"'flash'"),
    ],
)
def test_bad_configuration_or_input_raises(kw, x_shape, t_shape, y, match):
  config = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_groups=4)
  model = UNet(**{**config, **kw})
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  t = jax.ShapeDtypeStruct(t_shape, jnp.int32)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0), x, t, y)


# ---------------------------------------------------------------- behaviour


def test_fresh_init_zeroes_output_convs_and_output():
  model = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attention_resolutions=(4,), num_groups=4)
  x, t = _inputs((1, 4, 4, 2))
  with _fast_rng():  # only which layers are zero matters, not the values
    params = jax.jit(model.init)(jax.random.key(0), x, t)["params"]
  blocks = list(params)
  zero_layers = (
      [("conv_out",)]
      + [(name, "conv2") for name in blocks if re.fullmatch(r".*_res\d+", name)]
      + [(name, "proj_out") for name in blocks if "_attn" in name]
  )
  # one level: 5 residual blocks (1 down, 2 middle, 2 up), 4 attention blocks (one
  # after each of them but the middle ones, plus the middle one).
  assert len(zero_layers) == 1 + 5 + 4, zero_layers
  for path in zero_layers:
    layer = params
    for key in path:
      layer = layer[key]
    assert not np.any(np.asarray(layer["kernel"])), path
  # every other kernel is random, hence non-zero.
  flat = flax.traverse_util.flatten_dict(params)
  others = [k for k in flat if k[-1] == "kernel" and k[:-1] not in zero_layers]
  assert others and all(np.any(np.asarray(flat[k])) for k in others)
  # so the whole network starts as the zero function (Ho et al.'s init_scale=0).
  assert not np.any(np.asarray(model.apply({"params": params}, x, t)))


@pytest.fixture(scope="module")
def tiny():
  """The TINY model, random parameters, inputs and one shared jitted ``apply``."""
  model = UNet(**TINY)
  x, t = _inputs(TINY_X_SHAPE)
  return model, _random_params(model, TINY_X_SHAPE), x, t, jax.jit(
      model.apply, static_argnames="train"
  )


def _mean_abs_diff(a, b) -> np.ndarray:
  """Per-example mean absolute difference, shape [B]."""
  return np.abs(np.asarray(a) - np.asarray(b)).mean(axis=(1, 2, 3))


# With these unit-gain weights the output has RMS ~0.6, float32 rounding is
# ~1e-6 of that, and a real change (other t, y or dropout mask) moves it by 0.03
# to 0.5 on average: 1e-3 is more than an order of magnitude from both.
CHANGED = 1e-3


def test_forward_is_finite_and_works_under_vmap(tiny):
  model, params, x, t, apply = tiny
  y = jnp.array(TINY_Y)
  out = apply(params, x, t, y)
  chex.assert_shape(out, TINY_X_SHAPE)
  chex.assert_tree_all_finite(out)
  per_example = jax.jit(
      jax.vmap(lambda xi, ti, yi: model.apply(params, xi[None], ti[None], yi[None])[0])
  )
  # same math per example; only the batch size of the reductions differs.
  chex.assert_trees_all_close(per_example(x, t, y), out, atol=1e-5)


def test_output_depends_on_t_and_y_and_null_label_is_default(tiny):
  _, params, x, t, apply = tiny
  base = apply(params, x, t, jnp.array(TINY_Y))
  assert np.all(_mean_abs_diff(base, apply(params, x, t + 100, jnp.array(TINY_Y))) > CHANGED)
  assert np.all(_mean_abs_diff(base, apply(params, x, t, jnp.array([1, 0]))) > CHANGED)
  null = apply(params, x, t, jnp.array([3, 3]))  # label num_classes=3 is the null label
  assert np.all(_mean_abs_diff(base, null) > CHANGED)
  chex.assert_trees_all_equal(apply(params, x, t, None), null)


def test_dropout_acts_only_in_training_with_an_rng(tiny):
  _, params, x, t, apply = tiny
  y = jnp.array(TINY_Y)
  rngs = lambda seed: {"dropout": jax.random.key(seed)}
  evaluation = apply(params, x, t, y)
  # evaluation ignores the dropout rng entirely.
  chex.assert_trees_all_equal(apply(params, x, t, y, rngs=rngs(3)), evaluation)
  with _fast_rng():
    train = apply(params, x, t, y, train=True, rngs=rngs(1))
    train_again = apply(params, x, t, y, train=True, rngs=rngs(1))
    train_other = apply(params, x, t, y, train=True, rngs=rngs(2))
  chex.assert_trees_all_equal(train_again, train)
  # rate 0.5 drops half of O(1) activations: the output moves by ~0.4.
  assert np.all(_mean_abs_diff(train, evaluation) > CHANGED)
  assert np.all(_mean_abs_diff(train, train_other) > CHANGED)
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    apply(params, x, t, y, train=True)


def test_bfloat16_compute_has_float32_params_and_output_close_to_float32(tiny):
  model32, _, x, t, apply32 = tiny
  model16 = UNet(**{**TINY, "dtype": "bfloat16"})
  assert all(
      leaf.dtype == jnp.float32
      for leaf in jax.tree.leaves(_param_shapes(model16, TINY_X_SHAPE))
  )
  apply16 = jax.jit(model16.apply)
  y = jnp.array(TINY_Y)
  errors = []
  for seed in range(4):  # new parameter values, same shapes: no recompilation
    # The zero-initialized output layers perturbed to 0.3x unit gain: every
    # residual branch is active but smaller than its skip path, as early in
    # training.
    params = _random_params(model32, TINY_X_SHAPE, seed=seed, residual_scale=0.3)
    out32, out16 = apply32(params, x, t, y), apply16(params, x, t, y)
    assert out16.dtype == jnp.float32
    errors.append(float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)))
  # bf16 keeps 8 significant bits (relative rounding up to 2**-9 ~ 2e-3 per
  # operand); through ~20 layers in sequence this compounds to ~0.5% (measured
  # 0.35-0.6% here; ~1% with full-scale branches, residual_scale=1). A zero error
  # would mean bf16 was not used at all.
  assert all(1e-4 < e < 1e-2 for e in errors), errors


def test_remat_matches_plain_forward_and_gradients():
  # one level of TINY keeps the two gradient compilations small.
  config = {**TINY, "channel_mult": (1,)}
  plain, remat = UNet(**config), UNet(**config, remat=True)
  x_shape = (2, 4, 4, 3)
  params = _random_params(plain, x_shape)
  x, t = _inputs(x_shape)
  y = jnp.array(TINY_Y)

  def value_and_grad(model):
    def loss(p):
      out = model.apply(p, x, t, y, train=True, rngs={"dropout": jax.random.key(5)})
      return jnp.mean(out**2)
    return jax.jit(jax.value_and_grad(loss))(params)

  with _fast_rng():
    (value_plain, grad_plain), (value_remat, grad_remat) = (
        value_and_grad(plain), value_and_grad(remat)
    )
  # the same computation (same dropout masks) re-run in the backward pass: equal
  # up to float32 reassociation by the compiler.
  chex.assert_trees_all_close(value_remat, value_plain, rtol=1e-5)
  chex.assert_trees_all_close(grad_remat, grad_plain, rtol=1e-4, atol=1e-6)
