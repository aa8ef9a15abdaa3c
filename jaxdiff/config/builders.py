"""From a training config to the objects it describes: the model and the optimizer options."""

from typing import Any

import ml_collections

from jaxdiff.models import UNet


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the training images."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def optimizer_options(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `jaxdiff.job.step.make_optimizer` taken from `config.train`."""
  return {key: train_config[key] for key in (
      "learning_rate", "warmup_steps", "grad_clip", "optimizer", "weight_decay", "b1", "b2",
      "eps")}


def build_model(config: ml_collections.ConfigDict) -> UNet:
  """`UNet(**config.model)`."""
  return UNet(**config.model)
