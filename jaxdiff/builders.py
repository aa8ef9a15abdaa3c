"""From a training config to the objects it describes: model, optimizer, state shape."""

from typing import Any

import jax
import ml_collections
import optax

from jaxdiff import training
from jaxdiff.models import UNet


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the training images."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def optimizer_options(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `training.make_optimizer` taken from `config.train`."""
  return {key: train_config[key] for key in (
      "learning_rate", "warmup_steps", "grad_clip", "optimizer", "weight_decay", "b1", "b2",
      "eps")}


def build_model(config: ml_collections.ConfigDict) -> UNet:
  """`UNet(**config.model)`."""
  return UNet(**config.model)


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of `config.train` (see `training.make_optimizer`)."""
  return training.make_optimizer(**optimizer_options(config.train))


def abstract_train_state(config: ml_collections.ConfigDict) -> training.TrainState:
  """The TrainState that `config` trains, with jax.ShapeDtypeStruct leaves (no compute)."""
  model, tx = build_model(config), build_optimizer(config)
  return jax.eval_shape(
      lambda rng: training.init_train_state(rng, model=model, tx=tx,
                                            image_shape=image_shape(config)),
      jax.random.PRNGKey(0))
