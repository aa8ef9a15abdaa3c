"""The discrete objectives' configs, models and one-line errors (jaxdiff.config.categorical)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data, discrete
from jaxdiff.config import builders, categorical, objectives, sampling, schema, validation
from jaxdiff.discrete import levels

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ("digits_d3pm.py", "digits_masked.py", "words_masked.py", "fashion_d3pm.py")


def _config(name="digits_d3pm.py"):
  return schema.load_config_file(ROOT / "configs" / name)


@pytest.mark.parametrize("name", CONFIGS[:3])
def test_configs_validate_and_their_models_give_k_logits_per_pixel(name):
  config = _config(name)
  validation.validate_config(config, num_devices=1)
  model = builders.build_model(config)
  shape = builders.image_shape(config)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros((1,), jnp.int32))
  tokens = jnp.full((2,) + shape, categorical.num_tokens(config.diffusion) - 1)
  out = model.apply(variables, tokens, jnp.array([3, 7]))
  assert out.shape == (2,) + shape[:2] + (config.diffusion.num_categories * shape[2],)
  sampling.check_fits(config.sample.sampler, config, num_steps=config.sample.num_steps)


@pytest.mark.parametrize("kernel, schedule", [("uniform", "cosine"), ("absorbing", "jsd"),
                                              ("gaussian", "linear")])
def test_loss_of_images_is_the_library_loss_of_their_tokens(kernel, schedule):
  """make_loss_fn reads the images' levels as tokens and the network's K * C channels as
  K logits per channel (the absorbing mask's logit fixed), then calls d3pm_loss."""
  config = _config()
  config.diffusion.update(kernel=kernel, kernel_schedule=schedule, num_timesteps=20)
  k = 17
  tokens = jax.random.randint(jax.random.PRNGKey(0), (3, 4, 4, 2), 0, k)
  x0 = levels.tokens_to_images(tokens, k)
  weights = jax.random.normal(jax.random.PRNGKey(1), (k + 1, 2 * k))
  network = jax.tree_util.Partial(
      lambda w, x, t: w[x].sum(axis=-2).reshape(x.shape[:-1] + (2 * k,)) * (1 + t[:, None, None, None] / 20), weights)
  rng = jax.random.PRNGKey(2)
  loss = objectives.make_loss_fn(config.diffusion)(network, x0, rng)

  def logits(x, t):
    out = network(x, t).reshape(x.shape + (k,))
    if kernel != "absorbing":
      return out
    return jnp.concatenate([out, jnp.full(x.shape + (1,), -1e30)], -1)

  expected = discrete.d3pm_loss(logits, categorical.kernel_from_config(config.diffusion), tokens,
                                rng, hybrid_coeff=0.001)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_masked_loss_scales_the_network_time():
  config = _config("digits_masked.py")
  k = 17
  tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 8, 8, 1), 0, k)
  seen = []
  network = lambda x, t: seen.append(t) or jnp.zeros(x.shape[:-1] + (k,))
  objectives.make_loss_fn(config.diffusion)(network, levels.tokens_to_images(tokens, k),
                                            jax.random.PRNGKey(0))
  t = np.asarray(seen[-1])
  assert t.shape == (4,) and 0 <= t.min() and t.max() <= 999 and t.max() > 1


def _with(name="digits_d3pm.py", **sections):
  config = _config(name)
  for section, values in sections.items():
    config[section].update(values)
  return config


@pytest.mark.parametrize("config, message", [
    (_with(diffusion=dict(num_categories=None)), "num_categories=None; the 'd3pm' objective"),
    (_with(diffusion=dict(num_categories=300)), "num_categories=300"),
    (_with(diffusion=dict(kernel="embedding")), "kernel='embedding' .*make_kernel"),
    (_with(diffusion=dict(kernel="cauchy")), "kernel='cauchy' is not one of"),
    (_with(diffusion=dict(kernel_schedule="sqrt")), "kernel_schedule='sqrt'"),
    (_with(diffusion=dict(discrete_loss="mse")), "discrete_loss='mse'"),
    (_with("digits_masked.py", diffusion=dict(masking="geometric")), "masking='geometric'"),
    (_with(model=dict(out_channels=16)), "out_channels=16; .* = 17"),
    (_with("words_masked.py", model=dict(num_tokens=27)), "num_tokens=27; x_t holds 28"),
    (_with(sample=dict(sampler="ddim")), "samples with 'd3pm', not 'ddim'"),
    (_with(sample=dict(num_steps=10)), "num_steps must be None or 1000"),
    (_with("digits.py", sample=dict(sampler="unmask")), "'unmask' is for the discrete 'masked'"),
    (_with("digits.py", eval=dict(metrics=("words",))), "'words'.*source='words'"),
])
def test_bad_configs_are_one_line_errors(config, message):
  with pytest.raises(ValueError, match=message) as error:
    validation.validate_config(config, num_devices=1)
  assert "\n" not in str(error.value)


def test_fashion_config_validates():
  validation.validate_config(_config("fashion_d3pm.py"), num_devices=1)


def test_bpd_metric_is_allowed_for_the_discrete_objectives():
  for name in CONFIGS:
    config = _config(name)
    config.eval.metrics = ("bpd",)
    validation.validate_config(config, num_devices=1)


def _digits(config):
  return data.make_source(config.data)


@pytest.mark.parametrize("k, message", [
    (16, "level 16 is not one of the 16 levels"),
    (33, "only 17 of the 33 levels occur"),
])
def test_categories_that_do_not_match_the_data_are_refused(k, message):
  config = _config()
  config.diffusion.num_categories = k
  with pytest.raises(ValueError, match=message) as error:
    categorical.check_data(config, _digits(config))
  assert "\n" not in str(error.value)
  config.data.quantize = True
  categorical.check_data(config, _digits(config))
  config.data.quantize, config.diffusion.num_categories = False, 17
  categorical.check_data(config, _digits(config))


def test_quantized_data_of_any_levels():
  """8-bit data with every level (as Fashion-MNIST) trains at K levels with quantize."""
  config = _config()
  config.diffusion.num_categories = 8
  source = data.ArraySource(np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1))
  with pytest.raises(ValueError, match="level 1 is not one of the 8 levels"):
    categorical.check_data(config, source)
  config.data.quantize = True
  categorical.check_data(config, source)
