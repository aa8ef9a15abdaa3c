"""From a training config to the objects it describes: the model and the optimizer options."""

from typing import Any

import ml_collections

import flax.linen as nn

from jaxdiff.config import categorical
from jaxdiff.data.captions import CAPTION_SETS, CaptionSet
from jaxdiff.models import DiT, OneHotInput, TokenTransformer, UNet
from jaxdiff.models.autoencoder import AutoencoderWithDiscriminator
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.discriminator import PatchDiscriminator
from jaxdiff.models.text_encoder import TextConditioned, TextEncoder

# config.model.name -> the module that config.model's other fields build.
MODELS: dict[str, type[nn.Module]] = {"unet": UNet, "dit": DiT, "transformer": TokenTransformer}


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(H, W, C) of the training images."""
  return (config.data.image_size, config.data.image_size, config.data.channels)


def is_latent(config: ml_collections.ConfigDict) -> bool:
  """Whether the run diffuses in an autoencoder's latent space (`config.autoencoder`)."""
  section = config.autoencoder
  return section.workdir is not None or section.latent_channels is not None


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """(h, w, c) of what the model denoises: the images, or for a latent run the latents
  [H / f, W / f, latent_channels] (fields recorded when the run started)."""
  if not is_latent(config):
    return image_shape(config)
  section = config.autoencoder
  if section.downsampling_factor is None or section.latent_channels is None:
    raise ValueError("config.autoencoder.downsampling_factor and latent_channels are not "
                     "recorded: resolve the config with jaxdiff.job.latents first")
  size = config.data.image_size // section.downsampling_factor
  return (size, size, section.latent_channels)


def caption_set(config: ml_collections.ConfigDict) -> CaptionSet:
  """The captions of `config.conditioner.captions`."""
  return CAPTION_SETS[config.conditioner.captions]


def text_encoder(config: ml_collections.ConfigDict) -> TextEncoder:
  """The TextEncoder of `config.conditioner` over its captions' vocabulary."""
  section = config.conditioner
  return TextEncoder(vocab_size=len(caption_set(config).vocabulary), width=section.width,
                     depth=section.depth, num_heads=section.num_heads,
                     max_length=section.max_length)


def build_autoencoder(config: ml_collections.ConfigDict) -> AutoencoderWithDiscriminator:
  """`AutoencoderKL(**config.model)` with the patch discriminator that
  `config.autoencoder.disc_weight > 0` asks for."""
  fields = {key: value for key, value in config.model.items() if key != "name"}
  section = config.autoencoder
  discriminator = None
  if section.disc_weight > 0:
    discriminator = PatchDiscriminator(channels=section.disc_channels,
                                       num_layers=section.disc_layers,
                                       num_groups=config.model.norm_num_groups)
  return AutoencoderWithDiscriminator(AutoencoderKL(**fields), discriminator)


def optimizer_options(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of `jaxdiff.job.step.make_optimizer` taken from `config.train`."""
  return {key: train_config[key] for key in (
      "learning_rate", "warmup_steps", "grad_clip", "optimizer", "weight_decay", "b1", "b2",
      "eps")}


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """`UNet(**config.model)`, `DiT(**config.model)` or `TokenTransformer(**config.model)`, as
  `config.model.name` says; for a discrete objective ("d3pm", "masked") an image network
  reads one-hot tokens (`OneHotInput`, its parameters under "backbone"); with
  `config.conditioner.name="text"` that network sits inside a `TextConditioned` with its
  TextEncoder; for "autoencoder_kl" the autoencoder that run trains (`build_autoencoder`).

  `name` passes through as the Flax module's name, which leaves its variables unchanged.
  """
  name = config.model.name
  if name == "autoencoder_kl":
    return build_autoencoder(config)
  if name not in MODELS:
    raise ValueError(f"config.model.name={name!r} is not one of {tuple(MODELS)}.")
  model = MODELS[name](**config.model)
  if categorical.is_categorical(config) and name != "transformer":
    model = OneHotInput(backbone=model, num_tokens=categorical.num_tokens(config.diffusion))
  if config.conditioner.name == "text":
    return TextConditioned(model, text_encoder(config))
  return model
