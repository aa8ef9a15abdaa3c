"""Tests for jaxdiff.job.step (step, optimizer, EMA), the shardings and the config."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdiff.config import objectives, schema, validation
from jaxdiff.job import distributed, generation, step as step_lib
from jaxdiff.models import UNet

TINY_UNET = dict(base_channels=8, channel_mult=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_groups=4, dropout=0.0)
IMAGE_SHAPE = (8, 8, 1)


def _batch(batch_size=8, seed=0):
  images = jax.random.uniform(jax.random.PRNGKey(seed), (batch_size,) + IMAGE_SHAPE,
                              minval=-1.0, maxval=1.0)
  return {"image": images, "label": jnp.arange(batch_size, dtype=jnp.int32) % 3}


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def setup():
  """A tiny unconditional U-Net, its initial state and one jitted (non-donating) step."""
  model = UNet(**TINY_UNET)
  tx = step_lib.make_optimizer(learning_rate=1e-3, warmup_steps=0, grad_clip=1.0)
  state = step_lib.init_train_state(jax.random.PRNGKey(0), model=model, tx=tx,
                                    image_shape=IMAGE_SHAPE)
  config = schema.base_config()
  step = jax.jit(functools.partial(
      step_lib.train_step, loss_fn=objectives.make_loss_fn(config.diffusion), ema_decay=0.9))
  return state, step


def test_learning_rate_warmup_values():
  schedule = step_lib.learning_rate_schedule(learning_rate=2e-4, warmup_steps=100)
  assert float(schedule(0)) == 0.0
  # float32 arithmetic of optax's interpolation: equal to 1 ulp.
  np.testing.assert_allclose(float(schedule(50)), 1e-4, rtol=1e-6)
  assert float(schedule(100)) == float(schedule(10_000)) == np.float32(2e-4)
  assert float(step_lib.learning_rate_schedule(learning_rate=1e-3, warmup_steps=0)(0)) == (
      np.float32(1e-3))


def test_make_optimizer_clips_then_adam():
  params = {"w": jnp.zeros(3)}
  grads = [{"w": jnp.array([30.0, -40.0, 0.0])}, {"w": jnp.array([0.01, 0.02, -0.03])}]
  reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(
      step_lib.learning_rate_schedule(learning_rate=0.1, warmup_steps=0)))

  def run(tx):
    opt_state, updates = tx.init(params), []
    for g in grads:
      update, opt_state = tx.update(g, opt_state, params)
      updates.append(update["w"])
    return updates

  clipped = run(step_lib.make_optimizer(learning_rate=0.1, warmup_steps=0, grad_clip=1.0))
  unclipped = run(step_lib.make_optimizer(learning_rate=0.1, warmup_steps=0, grad_clip=0.0))
  for ours, ref in zip(clipped, run(reference)):
    np.testing.assert_array_equal(ours, ref)
  # Clipping the norm-50 first gradient changes Adam's second update.
  assert not np.allclose(clipped[1], unclipped[1], rtol=1e-3)


def test_make_optimizer_rejects_bad_options():
  with pytest.raises(ValueError, match="weight_decay=0.1 needs optimizer='adamw'"):
    step_lib.make_optimizer(learning_rate=1e-3, warmup_steps=0, grad_clip=1.0,
                            weight_decay=0.1)
  with pytest.raises(ValueError, match="optimizer='sgd'"):
    step_lib.make_optimizer(learning_rate=1e-3, warmup_steps=0, grad_clip=1.0,
                            optimizer="sgd")


def test_ema_update_is_exact_convex_combination():
  ema = {"a": jnp.ones(4), "b": jnp.full((2, 2), -2.0)}
  params = {"a": jnp.full(4, 3.0), "b": jnp.full((2, 2), 2.0)}
  new = step_lib.ema_update(ema, params, decay=0.75)  # Exact in binary floating point.
  np.testing.assert_array_equal(new["a"], np.full(4, 1.5))
  np.testing.assert_array_equal(new["b"], np.full((2, 2), -1.0))


def test_drop_labels():
  labels = jnp.arange(20_000, dtype=jnp.int32) % 10
  np.testing.assert_array_equal(
      step_lib.drop_labels(jax.random.PRNGKey(0), labels, null_label=10, drop_prob=0.0), labels)
  dropped = np.asarray(step_lib.drop_labels(jax.random.PRNGKey(1), labels, null_label=10,
                                            drop_prob=0.2))
  is_null = dropped == 10
  np.testing.assert_array_equal(dropped[~is_null], np.asarray(labels)[~is_null])
  # Binomial(20000, 0.2): std 0.0028 of the fraction; 0.012 is over 4 std.
  assert abs(is_null.mean() - 0.2) < 0.012


def test_train_step_updates_deterministically(setup):
  state, step = setup
  batch, rng = _batch(), jax.random.PRNGKey(7)
  new_state, metrics = step(state, batch, rng)
  again, metrics_again = step(state, batch, rng)
  assert _tree_equal(new_state, again) and float(metrics["loss"]) == float(metrics_again["loss"])
  assert int(new_state.step) == 1 and bool(metrics["finite"])
  chex.assert_trees_all_equal_shapes_and_dtypes(new_state.params, state.params)
  assert not _tree_equal(new_state.params, state.params)
  # EMA: 0.9 * old EMA + 0.1 * new params; XLA may fuse into FMAs, so 1e-6 relative.
  chex.assert_trees_all_close(
      new_state.ema_params,
      jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, state.ema_params, new_state.params),
      rtol=1e-6, atol=1e-7)
  # The step's randomness is fold_in(rng, step): another step index draws other t / noise.
  _, other = step(state.replace(step=jnp.ones((), jnp.int32)), batch, rng)
  assert float(other["loss"]) != float(metrics["loss"])


def test_train_step_non_finite_loss_keeps_state(setup):
  state, step = setup
  batch = _batch()
  batch["image"] = batch["image"].at[0, 0, 0, 0].set(jnp.nan)
  new_state, metrics = step(state, batch, jax.random.PRNGKey(7))
  assert not bool(metrics["finite"])
  assert _tree_equal(new_state, state)


def test_train_step_non_finite_update_keeps_state(setup):
  """A finite loss and gradient whose update is not finite (a NaN learning rate) is caught
  in the updated parameters, EMA and optimizer state, and leaves the state as it was."""
  state, _ = setup
  nan_rate = state.replace(tx=step_lib.make_optimizer(learning_rate=float("nan"),
                                                      warmup_steps=0, grad_clip=1.0))
  step = jax.jit(functools.partial(
      step_lib.train_step, loss_fn=objectives.make_loss_fn(schema.base_config().diffusion),
      ema_decay=0.9))
  new_state, metrics = step(nan_rate, _batch(), jax.random.PRNGKey(7))
  assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["grad_norm"]))
  assert not bool(metrics["finite"])
  assert _tree_equal(new_state, nan_rate)


def test_accumulating_step_sums_metrics_and_freezes_after_a_bad_step(setup):
  state, _ = setup
  step = jax.jit(functools.partial(
      step_lib.accumulating_train_step,
      loss_fn=objectives.make_loss_fn(schema.base_config().diffusion), ema_decay=0.9))
  plain = jax.jit(functools.partial(
      step_lib.train_step, loss_fn=objectives.make_loss_fn(schema.base_config().diffusion),
      ema_decay=0.9))
  rng, sums, expected = jax.random.PRNGKey(7), step_lib.MetricSums.zeros(), state
  losses = []
  for seed in range(2):
    state, sums = step(state, sums, _batch(seed=seed), rng)
    expected, metrics = plain(expected, _batch(seed=seed), rng)
    losses.append(float(metrics["loss"]))
  assert _tree_equal(state, expected) and int(sums.count) == 2
  np.testing.assert_allclose(float(sums.loss), sum(losses), rtol=1e-6)
  assert int(sums.first_non_finite) == -1
  bad = _batch(seed=2)
  bad["image"] = bad["image"].at[0, 0, 0, 0].set(jnp.nan)
  frozen, sums = step(state, sums, bad, rng)  # Step 2 is not finite ...
  frozen, sums = step(frozen, sums, _batch(seed=3), rng)  # ... and step 3 changes nothing.
  assert int(sums.first_non_finite) == 2 and int(sums.count) == 2
  assert np.isnan(float(sums.bad_loss)) and _tree_equal(frozen, state)


def test_class_conditional_step_uses_labels():
  model = UNet(**TINY_UNET, num_classes=3)
  tx = step_lib.make_optimizer(learning_rate=1e-3, warmup_steps=0, grad_clip=1.0)
  state = step_lib.init_train_state(jax.random.PRNGKey(0), model=model, tx=tx,
                                    image_shape=IMAGE_SHAPE)
  step = jax.jit(functools.partial(
      step_lib.train_step, loss_fn=objectives.make_loss_fn(schema.base_config().diffusion),
      ema_decay=0.9, label_dropout=0.1, num_classes=3))
  batch = _batch()
  # The U-Net's zero-initialised output convolutions (final, then each residual block's
  # second) pass no gradient to the label embedding for two updates; from the third on,
  # its update depends on which label each image has.
  for _ in range(2):
    state, _ = step(state, batch, jax.random.PRNGKey(1))
  labelled, _ = step(state, batch, jax.random.PRNGKey(1))
  relabelled, _ = step(state, dict(batch, label=(batch["label"] + 1) % 3), jax.random.PRNGKey(1))
  assert not _tree_equal(labelled.params["label_emb"], relabelled.params["label_emb"])
  with pytest.raises(ValueError, match="has no 'label'"):
    step(state, {"image": batch["image"]}, jax.random.PRNGKey(1))


def test_fsdp_spec():
  assert distributed.fsdp_spec((3, 3, 16, 32), num_shards=8, min_size=0) == (
      jax.sharding.PartitionSpec(None, None, None, "data"))
  assert distributed.fsdp_spec((3, 3, 16, 32), num_shards=8, min_size=10**6) == (
      jax.sharding.PartitionSpec())
  assert distributed.fsdp_spec((5, 7), num_shards=8, min_size=0) == jax.sharding.PartitionSpec()


def test_validate_config_errors_name_the_field():
  config = schema.base_config()
  validation.validate_config(config, num_devices=8)  # The defaults are valid.
  with pytest.raises(ValueError, match=r"config.train.batch_size=128 is not divisible by the "
                                       r"3 devices"):
    validation.validate_config(config, num_devices=3)
  with pytest.raises(AttributeError):
    config.train.batch_sise = 64  # The schema is locked: typos fail where they are made.
  unlocked = schema.base_config()
  unlocked.unlock()
  unlocked.train.batch_sise = 64
  with pytest.raises(ValueError, match=r"Unknown config field\(s\) config.train.batch_sise"):
    validation.validate_config(unlocked, num_devices=1)
  bad = schema.base_config()
  bad.diffusion.variance = "learned_range"
  with pytest.raises(ValueError, match="config.model.learn_sigma=True"):
    validation.validate_config(bad, num_devices=1)
  bad = schema.base_config()
  bad.diffusion.schedule = "cosine_typo"
  with pytest.raises(ValueError, match="config.diffusion.schedule='cosine_typo'"):
    validation.validate_config(bad, num_devices=1)


@pytest.mark.parametrize("field, value", [
    ("learning_rate", 0.0), ("learning_rate", -1e-3), ("learning_rate", float("nan")),
    ("learning_rate", float("inf")), ("eps", 0.0), ("b2", 1.0), ("grad_clip", -1.0)])
def test_validate_config_rejects_optimizers_that_cannot_stay_finite(field, value):
  config = schema.base_config()
  config.train[field] = value
  with pytest.raises(validation.ConfigError, match=f"config.train.{field}={value}"):
    validation.validate_config(config, num_devices=1)


def test_check_resume_names_unsafe_changes_and_allows_safe_ones():
  saved = schema.base_config()
  new = schema.base_config()
  new.train.update(num_steps=10**6, log_every=7)
  new.eval.update(every=100, metrics=("bpd",))
  assert set(validation.check_resume(saved, new, allow_changes=False)) == {
      "train.num_steps", "train.log_every", "eval.every", "eval.metrics"}
  new.model.channel_mult = (1, 2)
  new.diffusion.prediction = "v"
  with pytest.raises(validation.ConfigError) as error:
    validation.check_resume(saved, new, allow_changes=False)
  assert ("(config.diffusion.prediction: 'eps' -> 'v', config.model.channel_mult: "
          "[1, 2, 2, 2] -> [1, 2])") in str(error.value)
  assert "model.channel_mult" in validation.check_resume(saved, new, allow_changes=True)


def test_config_json_round_trip():
  config = schema.base_config()
  config.model.num_classes = 10
  restored = schema.config_from_json(config.to_json())
  assert restored.to_dict() == config.to_dict()
  assert isinstance(restored.model.channel_mult, tuple)


_EIGHT_DEVICES = textwrap.dedent("""
    import functools, json, os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jaxdiff import parallel
    from jaxdiff.config import objectives, schema
    from jaxdiff.job import distributed, step as step_lib
    from jaxdiff.models import UNet
    assert jax.device_count() == 8
    model = UNet(base_channels=8, channel_mult=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_groups=4, dropout=0.0)
    tx = step_lib.make_optimizer(learning_rate=1e-3, warmup_steps=0, grad_clip=1.0)
    init = functools.partial(step_lib.init_train_state, model=model, tx=tx,
                             image_shape=(8, 8, 1))
    step = functools.partial(step_lib.train_step, ema_decay=0.9,
                             loss_fn=objectives.make_loss_fn(schema.base_config().diffusion))
    images = jax.random.uniform(jax.random.PRNGKey(3), (16, 8, 8, 1), minval=-1, maxval=1)
    results = {}
    for name, devices, shard in (("one", jax.devices()[:1], False),
                                 ("eight", jax.devices(), False),
                                 ("eight_fsdp", jax.devices(), True)):
      mesh = parallel.make_mesh(devices)
      shardings = distributed.state_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh,
                                           shard_params=shard, min_size=0)
      state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(0))
      batch = {"image": jax.device_put(images, parallel.batch_sharding(mesh))}
      fn = jax.jit(step, in_shardings=(shardings, parallel.batch_sharding(mesh),
                                       parallel.replicated(mesh)),
                   out_shardings=(shardings, parallel.replicated(mesh)))
      for _ in range(2):
        state, metrics = fn(state, batch, jax.device_put(jax.random.PRNGKey(1),
                                                         parallel.replicated(mesh)))
      sharded = sum(len(l.sharding.device_set) == 8 and not l.sharding.is_fully_replicated
                    for l in jax.tree.leaves(state.params))
      results[name] = dict(params=[np.asarray(l).tolist() for l in jax.tree.leaves(state.params)],
                           loss=float(metrics["loss"]), sharded_leaves=int(sharded),
                           batch_shards=len(batch["image"].addressable_shards))
    print(json.dumps(results))
""")


def test_eight_device_step_matches_one_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  one = results["one"]
  assert results["eight"]["batch_shards"] == 8 and one["batch_shards"] == 1
  assert results["eight"]["sharded_leaves"] == 0 and results["eight_fsdp"]["sharded_leaves"] > 0
  for name in ("eight", "eight_fsdp"):
    # Only the order of float32 reductions over the batch differs (per-device partial
    # sums). Measured: params differ by <= 1.5e-8 after two Adam steps of lr 1e-3; 1e-6
    # leaves a 60x margin and is still a thousandth of one step's size.
    np.testing.assert_allclose(results[name]["loss"], one["loss"], rtol=1e-6)
    for ours, ref in zip(results[name]["params"], one["params"]):
      np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


class _LabelScale(nn.Module):
  """Stand-in denoiser: output = x * w[label] (label num_classes is the null label)."""

  num_classes: int = 3

  @nn.compact
  def __call__(self, x, t, y=None, *, train=False):
    del t, train
    w = self.param("w", nn.initializers.ones, (self.num_classes + 1,))
    y = jnp.full(x.shape[:1], self.num_classes) if y is None else y
    return x * w[y][:, None, None, None]


def test_model_fn_for_conditioning_and_guidance():
  model, params = _LabelScale(), {"w": jnp.array([1.0, 2.0, 3.0, 4.0])}
  x, t, labels = jnp.ones((2, 1, 1, 1)), jnp.zeros((2,), jnp.int32), jnp.array([0, 1])

  def out(**kw):
    return np.asarray(generation.model_fn_for(model, params, **kw)(x, t)).ravel()

  np.testing.assert_array_equal(out(), [4.0, 4.0])  # Unconditional: the null label.
  np.testing.assert_array_equal(out(labels=labels), [1.0, 2.0])
  # (1 - s) * uncond + s * cond, exact in floating point for these small integers.
  np.testing.assert_array_equal(out(labels=labels, guidance_scale=0.0, null_label=3), [4.0, 4.0])
  np.testing.assert_array_equal(out(labels=labels, guidance_scale=2.0, null_label=3), [-2.0, 0.0])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sample_batches_shapes_and_determinism(sampler):
  config = schema.base_config()
  config.model.num_classes = 3
  config.diffusion.num_timesteps = 50  # Linear betas scale by 1000 / T: T >= 21.
  config.data.update(image_size=4, channels=1)
  config.sample.update(sampler=sampler, num_samples=4, num_steps=3, guidance_scale=2.0)
  request = generation.request_from_config(config, batch_size=3)
  np.testing.assert_array_equal(request.labels, [0, 1, 2, 0])
  model, params = _LabelScale(), {"w": jnp.array([0.1, 0.2, 0.3, 0.4])}

  def draw(seed):
    return generation.sample_batches(config, model, params, jax.random.PRNGKey(seed), request)

  samples = draw(0)
  chex.assert_shape(samples, (4, 4, 4, 1))
  chex.assert_tree_all_finite(samples)
  np.testing.assert_array_equal(samples, draw(0))
  assert not np.array_equal(samples, draw(1))


def _load_config(name):
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", ["digits", "digits_ncsn", "digits_sde", "fashion_mnist",
                                  "cifar10_ddpm", "celeba64", "imagenet64"])
def test_shipped_configs_are_valid(name):
  config = _load_config(name)
  validation.validate_config(config, num_devices=8)
  assert set(config.keys()) >= {"model", "diffusion", "data", "train", "sample"}
  UNet(**config.model)  # The model section is exactly UNet's keyword arguments.


def test_cifar10_config_is_the_ddpm_recipe():
  config = _load_config("cifar10_ddpm")
  train = config.train
  assert (train.learning_rate, train.warmup_steps, train.grad_clip, train.batch_size,
          train.ema_decay) == (2e-4, 5000, 1.0, 128, 0.9999)
  assert config.data.random_flip and config.diffusion.num_timesteps == 1000
  params = jax.eval_shape(lambda: step_lib.init_train_state(
      jax.random.PRNGKey(0), model=UNet(**config.model), tx=optax.identity(),
      image_shape=(32, 32, 3))).params
  assert sum(x.size for x in jax.tree.leaves(params)) == 35_746_307  # Ho et al.: 35.7M.
