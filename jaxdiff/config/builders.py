"""From a training config to the objects it describes: the model and the optimizer options."""

from typing import Any

import ml_collections

import flax.linen as nn

from jaxdiff.config import categorical
from jaxdiff.models import DiT, OneHotInput, TokenTransformer, UNet

# config.model.name -> the module that config.model's other fields build.
MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "dit": DiT, "transformer": TokenTransformer}


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the training images."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def optimizer_options(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `jaxdiff.job.step.make_optimizer` taken from `config.train`."""
  return {key: train_config[key] for key in (
      "learning_rate", "warmup_steps", "grad_clip", "optimizer", "weight_decay", "b1", "b2",
      "eps")}


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """`UNet(**config.model)`, `DiT(**config.model)` or `TokenTransformer(**config.model)`, as
  `config.model.name` says; for a discrete objective ("d3pm", "masked") an image network
  reads one-hot tokens (`OneHotInput`, its parameters under "backbone").

  `name` passes through as the Flax module's name, which leaves its variables unchanged.
  """
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not one of {tuple(MODELS)}.")
  model = MODELS[name](**config.model)
  if categorical.is_categorical(config) and name != "transformer":
    return OneHotInput(backbone=model, num_tokens=categorical.num_tokens(config.diffusion))
  return model
