"""Latent diffusion's pieces: the posterior, the autoencoder and its objective, the
cross-attention blocks of the U-Net, the text encoder and captions.

Parameters come from `jax.eval_shape` filled with random values (as in test_models.py), so
that zero-initialized output layers do not make every dependence test trivially true.
"""

import hashlib
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxdiff import autoencoder as ae_lib
from jaxdiff import testing
from jaxdiff.config import builders, schema, validation
from jaxdiff.data import captions
from jaxdiff.models import UNet
from jaxdiff.models.autoencoder import AutoencoderWithDiscriminator, downsampling_factor
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.models.spatial_transformer import Attention, SpatialTransformer
from jaxdiff.models.text_encoder import TextConditioned, TextEncoder, null_tokens
from jaxdiff.posterior import DiagonalGaussian

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _random_like(tree, seed=0):
  rng = np.random.default_rng(seed)

  def fill(leaf):
    fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(max(fan_in, 1)),
                       leaf.dtype)
  return jax.tree.map(fill, tree)


def _random_params(module, *args, seed=0, **kwargs):
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  return _random_like(shapes, seed)


# --- the posterior ---------------------------------------------------------------------

def test_posterior_kl_matches_the_closed_form_in_float64(x64):
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 2, 2, 2))
  kl = np.asarray(DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar)).kl())
  for b in range(3):  # KL(N(m, diag(v)) || N(0, I)) with full covariances (jaxdiff.testing)
    m, v = mean[b].ravel(), np.exp(logvar[b].ravel())
    expected = testing.gaussian_kl(m, np.diag(v), np.zeros(8), np.eye(8))
    np.testing.assert_allclose(kl[b], expected, rtol=1e-12)


def test_posterior_log_prob_matches_scipy(x64):
  rng = np.random.default_rng(1)
  mean, logvar, z = (rng.normal(size=(2, 3, 4)) for _ in range(3))
  expected = scipy.stats.norm.logpdf(z, mean, np.exp(logvar / 2)).sum(axis=(1, 2))
  got = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(logvar)).log_prob(jnp.asarray(z))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_posterior_samples_have_the_posterior_moments():
  mean = jnp.array([[-1.0, 0.5, 2.0]])
  logvar = jnp.log(jnp.array([[0.25, 1.0, 4.0]]))
  n = 40_000
  post = DiagonalGaussian(jnp.broadcast_to(mean, (n, 3)), jnp.broadcast_to(logvar, (n, 3)))
  z = np.asarray(post.sample(jax.random.PRNGKey(0)), np.float64)
  std = np.sqrt([0.25, 1.0, 4.0])
  # Sample mean: standard error std / sqrt(n); 5 standard errors. Sample variance: standard
  # error sqrt(2 / n) * var for Gaussians; 5 standard errors.
  np.testing.assert_array_less(np.abs(z.mean(0) - mean[0]), 5 * std / math.sqrt(n))
  np.testing.assert_array_less(np.abs(z.var(0) - std ** 2), 5 * math.sqrt(2 / n) * std ** 2)
  assert np.all(np.asarray(post.mode()) == np.asarray(post.mean))


# --- the autoencoder -------------------------------------------------------------------

def _autoencoder(levels, latent_channels=3):
  return AutoencoderKL(in_channels=1, out_channels=1,
                       down_block_types=("DownEncoderBlock2D",) * levels,
                       up_block_types=("UpDecoderBlock2D",) * levels,
                       block_out_channels=(8,) * levels, latent_channels=latent_channels,
                       norm_num_groups=4)


@pytest.mark.parametrize("levels,f", [(1, 1), (2, 2), (3, 4), (4, 8)])
def test_encode_decode_shapes_for_every_f(levels, f):
  ae = _autoencoder(levels)
  assert downsampling_factor(ae) == f
  x = jax.ShapeDtypeStruct((2, 32, 24, 1), jnp.float32)
  params = jax.eval_shape(ae.init, jax.random.PRNGKey(0), x)
  mean, logvar = jax.eval_shape(lambda p, x: ae.apply(p, x, method=ae.encode), params, x)
  assert mean.shape == logvar.shape == (2, 32 // f, 24 // f, 3)
  z = jax.ShapeDtypeStruct(mean.shape, jnp.float32)
  assert jax.eval_shape(lambda p, z: ae.apply(p, z, method=ae.decode), params, z).shape == (
      2, 32, 24, 1)


@pytest.mark.parametrize("name,latent_shape", [("fashion_autoencoder", (4, 4, 4)),
                                               ("celeba64_autoencoder", (8, 8, 4))])
def test_shipped_autoencoder_configs_are_valid_and_give_their_latent_shape(name, latent_shape):
  config = schema.load_config_file(ROOT / "configs" / f"{name}.py")
  validation.validate_config(config, num_devices=8)
  ae = builders.build_autoencoder(config).autoencoder
  x = jax.ShapeDtypeStruct((1, config.data.image_size, config.data.image_size,
                            config.data.channels), jnp.float32)
  params = jax.eval_shape(ae.init, jax.random.PRNGKey(0), x)
  mean, _ = jax.eval_shape(lambda p, x: ae.apply(p, x, method=ae.encode), params, x)
  assert mean.shape[1:] == latent_shape


def test_autoencoder_model_rejects_sizes_not_divisible_by_f():
  model = AutoencoderWithDiscriminator(_autoencoder(3))
  with pytest.raises(ValueError, match="divisible by the downsampling factor 4"):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 10, 12, 1)))


@pytest.fixture(scope="module")
def gan_setup():
  model = AutoencoderWithDiscriminator(_autoencoder(2), PatchDiscriminator(8, 1, 4))
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1), minval=-1, maxval=1)
  params = _random_params(model, x)["params"]
  return model, params, x


def test_adaptive_weight_uses_the_last_layer_gradients_of_full_autodiff(gan_setup):
  model, params, x = gan_setup
  ae, disc = model.autoencoder, model.discriminator
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))

  def last_kernel_grad(loss_of_reconstruction):
    grads = jax.grad(lambda p: loss_of_reconstruction(
        ae.apply({"params": p}, z, method=ae.decode)))(params["autoencoder"])
    return grads["decoder"]["conv_out"]["kernel"]

  rec = lambda r: jnp.mean(ae_lib.reconstruction_loss(x, r, kind="l1"))  # noqa: E731
  gan = lambda r: -jnp.mean(disc.apply({"params": params["discriminator"]}, r))  # noqa: E731
  reconstruction, features = ae_lib.decode_with_features(ae, params["autoencoder"], z)
  got = ae_lib.last_layer_grads(ae, params["autoencoder"], features,
                                jax.grad(rec)(reconstruction), jax.grad(gan)(reconstruction))
  for value, expected in zip(got, (last_kernel_grad(rec), last_kernel_grad(gan))):
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-6)
  weight = ae_lib.adaptive_weight(*got)
  expected = np.linalg.norm(last_kernel_grad(rec)) / (np.linalg.norm(last_kernel_grad(gan))
                                                        + 1e-4)
  np.testing.assert_allclose(weight, expected, rtol=1e-4)


def test_objective_trains_each_player_on_its_own_loss(gan_setup):
  model, params, x = gan_setup
  key, step = jax.random.PRNGKey(2), jnp.int32(5)
  full = ae_lib.AutoencoderObjective(model, disc_weight=0.5)
  grads = jax.grad(lambda p: jnp.mean(full(p, x, key, step)))(params)
  # The discriminator's gradient is that of its hinge loss alone (the generator term is cut).
  recon = ae_lib.decode_with_features(
      model.autoencoder, params["autoencoder"],
      DiagonalGaussian(*model.autoencoder.apply({"params": params["autoencoder"]}, x,
                                                method=AutoencoderKL.encode)).sample(key))[0]
  d_only = jax.grad(lambda d: jnp.mean(ae_lib.hinge_discriminator_loss(
      model.discriminator.apply({"params": d}, x),
      model.discriminator.apply({"params": d}, recon))))(params["discriminator"])
  for a, b in zip(jax.tree.leaves(grads["discriminator"]), jax.tree.leaves(d_only)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  # Before disc_start the loss is the reconstruction + KL objective exactly.
  late = ae_lib.AutoencoderObjective(model, disc_weight=0.5, disc_start=6)
  plain = ae_lib.AutoencoderObjective(AutoencoderWithDiscriminator(model.autoencoder))
  np.testing.assert_allclose(late(params, x, key, step), plain(params, x, key, step), rtol=1e-6)
  assert not np.allclose(full(params, x, key, step), plain(params, x, key, step))


def test_reconstruction_and_hinge_losses_match_their_formulas():
  rng = np.random.default_rng(3)
  x, r = rng.uniform(-1, 1, (2, 3, 3, 1)), rng.uniform(-1, 1, (2, 3, 3, 1))
  np.testing.assert_allclose(ae_lib.reconstruction_loss(x, r, kind="l1"),
                             np.abs(x - r).sum(axis=(1, 2, 3)), rtol=1e-6)
  np.testing.assert_allclose(ae_lib.reconstruction_loss(x, r, kind="l2"),
                             ((x - r) ** 2).sum(axis=(1, 2, 3)), rtol=1e-6)
  real, fake = rng.normal(size=(2, 2, 2, 1)), rng.normal(size=(2, 2, 2, 1))
  expected = 0.5 * (np.maximum(1 - real, 0).mean(axis=(1, 2, 3))
                    + np.maximum(1 + fake, 0).mean(axis=(1, 2, 3)))
  np.testing.assert_allclose(ae_lib.hinge_discriminator_loss(real, fake), expected, rtol=1e-6)


# --- cross-attention -------------------------------------------------------------------

def test_cross_attention_ignores_masked_context_tokens():
  block = SpatialTransformer(heads=2, depth=2, num_groups=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 8))
  context = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 6))
  mask = jnp.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]], bool)
  params = _random_params(block, x, context, mask)
  out = block.apply(params, x, context, mask)
  changed = jnp.where(mask[..., None], context, 100.0 * jax.random.normal(
      jax.random.PRNGKey(2), context.shape))
  np.testing.assert_array_equal(block.apply(params, x, changed, mask), out)
  # A real token does matter, so the check above could fail.
  unmasked = context.at[0, 1].add(1.0)
  assert np.abs(block.apply(params, x, unmasked, mask)[0] - out[0]).max() > 1e-3
  # With every token masked (row 2) the cross-attention adds nothing: same as a context of
  # zeros that is also fully masked, whatever the values.
  np.testing.assert_array_equal(
      block.apply(params, x, jnp.zeros_like(context), mask)[2], out[2])


def _attention_reference(params, h, context, mask):
  """softmax(Q K^T / sqrt(d) + log mask) V per head, then the output projection, in float64
  numpy (Rombach et al. 2022, eq. 3); an all-masked row attends to nothing (output = bias)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  q, k, v = (np.einsum("bnc,chd->bhnd", x, p[name]["kernel"])
             for name, x in (("q", h), ("k", context), ("v", context)))
  logits = np.einsum("bhnd,bhld->bhnl", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask[:, None, None, :], logits, -np.inf)
  top = np.max(logits, axis=-1, keepdims=True)
  weights = np.exp(logits - np.where(np.isfinite(top), top, 0.0))
  total = weights.sum(axis=-1, keepdims=True)
  weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
  out = np.einsum("bhnl,bhld->bnhd", weights, v)
  return np.einsum("bnhd,hdc->bnc", out, p["proj_out"]["kernel"]) + p["proj_out"]["bias"]


def test_cross_attention_matches_a_float64_numpy_reference(x64):
  heads = 2
  block = Attention(heads, dtype=jnp.float64)
  rng = np.random.default_rng(3)
  h, context = rng.normal(size=(3, 6, 8)), rng.normal(size=(3, 5, 4))
  mask = np.array([[1, 1, 0, 0, 0], [1, 0, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                        _random_params(block, jnp.asarray(h), jnp.asarray(context),
                                       jnp.asarray(mask)))
  got = block.apply(params, jnp.asarray(h), jnp.asarray(context), jnp.asarray(mask))
  # jax.nn.dot_product_attention forms the logits and softmax in float32 even for float64
  # inputs: agreement to float32 rounding of O(1) values (a wrong scale or an ignored mask
  # moves outputs by O(0.1)).
  np.testing.assert_allclose(got, _attention_reference(params, h, context, mask),
                             rtol=1e-5, atol=1e-6)


def _caption_unet(**overrides):
  return UNet(**{**dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(), num_groups=4, num_head_channels=4,
                        context_dim=6, transformer_resolutions=(8, 4)), **overrides})


def test_conditional_unet_output_depends_on_the_context():
  unet = _caption_unet()
  x, t = jnp.ones((2, 8, 8, 1)), jnp.array([3, 700])
  context = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6))
  params = _random_params(unet, x, t, context=context)
  out = unet.apply(params, x, t, context=context)
  other = unet.apply(params, x, t, context=context.at[0].multiply(-1.0))
  assert np.abs(other[0] - out[0]).max() > 1e-3
  np.testing.assert_allclose(other[1], out[1], rtol=1e-5, atol=1e-6)  # per example
  names = set(params["params"])
  assert {"down0_transformer0", "down1_transformer0", "mid_transformer",
          "up0_transformer1"} <= names


@pytest.mark.parametrize("kwargs,match", [
    (dict(context=jnp.zeros((2, 4, 5))), "context has width 5, but the model's context_dim is 6"),
    (dict(), "pass context"),
    (dict(context=jnp.zeros((2, 4, 6)), context_mask=jnp.ones((2, 3), bool)),
     r"context_mask must have shape \[B, L\]"),
])
def test_bad_context_is_a_one_line_error_before_compiling(kwargs, match):
  unet = _caption_unet()
  with pytest.raises(ValueError, match=match) as info:
    jax.eval_shape(unet.init, jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 1)), jnp.zeros(2),
                   **kwargs)
  assert "\n" not in str(info.value)


def test_transformer_fields_need_a_context_width_and_plain_unets_refuse_a_context():
  with pytest.raises(ValueError, match="needs context_dim"):
    jax.eval_shape(_caption_unet(context_dim=None).init, jax.random.PRNGKey(0),
                   jnp.ones((1, 8, 8, 1)), jnp.zeros(1))
  with pytest.raises(ValueError, match="no cross-attention"):
    jax.eval_shape(_caption_unet(transformer_resolutions=()).init, jax.random.PRNGKey(0),
                   jnp.ones((1, 8, 8, 1)), jnp.zeros(1), context=jnp.zeros((1, 2, 6)))


def _tree_fingerprint(**unet_fields):
  model = UNet(**unet_fields)
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = None if unet_fields.get("num_classes") is None else jax.ShapeDtypeStruct((1,), jnp.int32)
  tree = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, y)
  rows = sorted(f"{jax.tree_util.keystr(path)}:{leaf.shape}"
                for path, leaf in jax.tree_util.tree_leaves_with_path(tree))
  return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16], len(rows)


@pytest.mark.parametrize("fields,expected", [
    (dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
          num_head_channels=4, num_groups=4, use_scale_shift_norm=True, resblock_updown=True,
          num_classes=3), ("7c27026e168e7d1b", 161)),
    (dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(8, 4),
          num_groups=4, remat=True), ("ccb8e82b97f1c907", 258)),
])
def test_existing_unets_keep_their_parameter_tree(fields, expected):
  # Fingerprints (paths and shapes of every variable) taken from the U-Net before the
  # cross-attention fields existed: old checkpoints still restore.
  assert _tree_fingerprint(**fields) == expected


# --- text encoder and captions ----------------------------------------------------------

def test_text_conditioned_model_depends_on_the_caption_and_defaults_to_the_empty_one():
  model = TextConditioned(_caption_unet(), TextEncoder(vocab_size=12, width=6, depth=1,
                                                       num_heads=2, max_length=5))
  x, t = jnp.ones((2, 8, 8, 1)), jnp.array([10, 10])
  params = _random_params(model, x, t)
  tokens = jnp.array([[1, 4, 5, 0, 0], [1, 7, 0, 0, 0]])
  out = model.apply(params, x, t, tokens)
  other = model.apply(params, x, t, tokens.at[0, 1].set(9))
  assert np.abs(other[0] - out[0]).max() > 1e-3
  # Padding is ignored: the same captions with less padding give the same output.
  np.testing.assert_allclose(model.apply(params, x, t, tokens[:, :3]), out, rtol=1e-5,
                             atol=1e-6)
  empty = jnp.broadcast_to(null_tokens(5), (2, 5))
  np.testing.assert_array_equal(model.apply(params, x, t), model.apply(params, x, t, empty))


def test_caption_tokens_follow_the_measured_attributes():
  caption_set = captions.CAPTION_SETS["fashion_mnist"]
  vocab = caption_set.vocabulary
  # 8x8 images: a bright item covering 75% (large for a sneaker, terciles 0.261 / 0.305) and
  # a dark one covering 12.5% (small); brightness 1.0 and 0.3 against 0.534 / 0.634.
  big = np.full((8, 8, 1), -1.0, np.float32)
  big[:6] = 1.0
  small = np.full((8, 8, 1), -1.0, np.float32)
  small[:1] = -0.4
  images, labels = jnp.asarray(np.stack([big, small])), jnp.array([7, 7])
  words = set()
  for seed in range(16):  # every attribute word is kept with probability 1/2
    tokens = np.asarray(captions.caption_tokens(caption_set, images, labels,
                                                jax.random.PRNGKey(seed), max_length=5))
    for row, allowed in zip(tokens, ({"large", "bright"}, {"small", "dark"})):
      text = [vocab[i] for i in row if i > 1]
      assert text[-1] == "sneaker" and set(text[:-1]) <= allowed
      words |= set(text[:-1])
  assert words == {"large", "bright", "small", "dark"}


def test_tokenize_refuses_unknown_words_and_long_captions_in_one_line():
  caption_set = captions.CAPTION_SETS["fashion_mnist"]
  with pytest.raises(ValueError, match="unknown word 'red'") as info:
    caption_set.tokenize("red bag", max_length=5)
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="at most 4 fit"):
    caption_set.tokenize("large dark bright ankle boot", max_length=5)
  ids = caption_set.tokenize("Large dark ankle boot.", max_length=6)
  assert [caption_set.vocabulary[i] for i in ids] == [
      "<bos>", "large", "dark", "ankle", "boot", "<pad>"]


@pytest.mark.parametrize("latent", [True, False])
@pytest.mark.parametrize("section,field,value,message", [
    ("data", "task", {"name": "super_resolution"}, "does not combine with an image-to-image task"),
    ("diffusion", "objective", "masked", "does not combine with the discrete objective")])
def test_latent_and_caption_runs_reject_image_tasks_and_discrete_objectives(
    latent, section, field, value, message):
  config = schema.load_config_file(ROOT / "configs" / "fashion_latent.py")
  if latent:
    config.autoencoder.workdir = "runs/fashion_autoencoder"
  else:
    config.autoencoder.update(workdir=None, latent_channels=None)
  validation.validate_config(config, num_devices=1)
  if isinstance(value, dict):
    config[section][field].update(value)
  else:
    config[section][field] = value
  who = "a latent run" if latent else "config.conditioner.name='text'"
  with pytest.raises(validation.ConfigError, match=f"{who}.* {message}"):
    validation.validate_config(config, num_devices=1)


def test_the_pixel_counterpart_cross_attends_at_the_latent_models_resolutions():
  latent = schema.load_config_file(ROOT / "configs" / "fashion_latent.py")
  pixel = schema.load_config_file(ROOT / "configs" / "fashion_pixel_captions.py")
  validation.validate_config(pixel, num_devices=1)
  assert pixel.autoencoder.latent_channels is None and pixel.data == latent.data
  heights = {16 // 2**level for level in range(len(pixel.model.channel_mult))}
  assert set(pixel.model.transformer_resolutions) <= heights
  assert pixel.model.transformer_resolutions == latent.model.transformer_resolutions
  assert pixel.conditioner == latent.conditioner and pixel.diffusion == latent.diffusion
