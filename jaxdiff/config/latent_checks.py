"""Validation of the autoencoder, latent-diffusion and conditioner settings (pure: reads no
files; `jaxdiff.job.latents.resolve_config` checks the autoencoder run a config names)."""

from __future__ import annotations

import ml_collections

from jaxdiff.autoencoder import RECONSTRUCTION_LOSSES
from jaxdiff.config import builders, categorical
from jaxdiff.config.errors import ConfigError
from jaxdiff.data.captions import CAPTION_SETS

CONDITIONERS = ("text",)


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_autoencoder_run(config: ml_collections.ConfigDict) -> None:
  """A run that trains the KL autoencoder (config.model.name="autoencoder_kl")."""
  model, section = config.model, config.autoencoder
  levels = len(model.block_out_channels)
  _require(levels >= 1 and all(c >= 1 for c in model.block_out_channels),
           f"config.model.block_out_channels={tuple(model.block_out_channels)}; expected "
           "positive channel counts, one per level")
  for field in ("down_block_types", "up_block_types"):
    _require(len(model[field]) == levels,
             f"config.model.{field} has {len(model[field])} entries; expected one per level "
             f"of block_out_channels ({levels})")
  factor = 2 ** (levels - 1)
  _require(config.data.image_size % factor == 0,
           f"config.data.image_size={config.data.image_size} is not divisible by the "
           f"autoencoder's downsampling factor f={factor} ({levels} levels)")
  for field in ("in_channels", "out_channels"):
    _require(model[field] == config.data.channels,
             f"config.model.{field}={model[field]}, but the images have "
             f"config.data.channels={config.data.channels}")
  _require(model.latent_channels >= 1,
           f"config.model.latent_channels={model.latent_channels}; expected >= 1")
  bad = [c for c in model.block_out_channels if c % model.norm_num_groups]
  _require(not bad, f"config.model.norm_num_groups={model.norm_num_groups} does not divide "
                    f"the {bad[0] if bad else 0} channels of a level")
  _require(section.reconstruction in RECONSTRUCTION_LOSSES,
           f"config.autoencoder.reconstruction={section.reconstruction!r} is not one of "
           f"{RECONSTRUCTION_LOSSES}")
  for field in ("kl_weight", "disc_weight", "disc_start"):
    _require(section[field] >= 0, f"config.autoencoder.{field}={section[field]}; expected >= 0")
  _require(section.disc_layers >= 1 and section.disc_channels >= 1,
           "config.autoencoder.disc_layers and disc_channels must be >= 1")
  _require(not builders.is_latent(config) and config.conditioner.name is None,
           "an autoencoder run (config.model.name='autoencoder_kl') takes neither "
           "config.autoencoder.workdir / latent_channels nor config.conditioner.name")


def validate_latent(config: ml_collections.ConfigDict) -> None:
  """A diffusion run in latent space names its autoencoder run."""
  if not builders.is_latent(config):
    return
  section = config.autoencoder
  _require(bool(section.workdir),
           "config.autoencoder.workdir is missing: a latent run (config.autoencoder."
           f"latent_channels={section.latent_channels}) needs the train.py --workdir of its "
           "autoencoder (a run of configs/fashion_autoencoder.py or any "
           "config.model.name='autoencoder_kl' run)")
  _require(section.scale_factor is None or section.scale_factor > 0,
           f"config.autoencoder.scale_factor={section.scale_factor}; expected > 0 or None")
  _require(section.scale_examples >= 1,
           f"config.autoencoder.scale_examples={section.scale_examples}; expected >= 1")


def validate_combination(config: ml_collections.ConfigDict) -> None:
  """Latent runs and caption models are Gaussian diffusion of unconditioned images: neither
  takes an image-to-image task (its conditions are pixels) or a discrete objective."""
  if builders.is_latent(config):
    what = "a latent run (config.autoencoder.workdir / latent_channels)"
  elif config.conditioner.name is not None:
    what = f"config.conditioner.name={config.conditioner.name!r}"
  else:
    return
  _require(config.data.task.name is None,
           f"{what} does not combine with an image-to-image task: config.data.task.name="
           f"{config.data.task.name!r}; expected None")
  _require(not categorical.is_categorical(config),
           f"{what} does not combine with the discrete objective config.diffusion.objective="
           f"{config.diffusion.objective!r}")


def validate_conditioner(config: ml_collections.ConfigDict) -> None:
  """config.conditioner against the model: a text conditioner needs a U-Net whose
  cross-attention width is the encoder's, and cross-attention needs a conditioner."""
  section, model = config.conditioner, config.model
  transformers = tuple(model.get("transformer_resolutions", ()))
  if section.name is None:
    _require(not transformers,
             f"config.model.transformer_resolutions={transformers} cross-attend to a context; "
             "set config.conditioner.name (e.g. 'text')")
    return
  _require(section.name in CONDITIONERS,
           f"config.conditioner.name={section.name!r} is not one of {CONDITIONERS} or None")
  _require(model.name == "unet", f"config.conditioner.name={section.name!r} needs the U-Net "
                                 f"(config.model.name='unet'), not {model.name!r}")
  _require(section.captions in CAPTION_SETS,
           f"config.conditioner.captions={section.captions!r} is not one of "
           f"{tuple(CAPTION_SETS)}")
  _require(model.num_classes is None,
           "config.conditioner.name='text' conditions on captions; set "
           "config.model.num_classes=None")
  _require(bool(transformers), "config.conditioner.name='text' needs cross-attention: set "
                               "config.model.transformer_resolutions")
  _require(model.context_dim == section.width,
           f"config.model.context_dim={model.context_dim}, but the text encoder's width is "
           f"config.conditioner.width={section.width}; they must be equal")
  _require(section.width % section.num_heads == 0,
           f"config.conditioner.num_heads={section.num_heads} does not divide "
           f"config.conditioner.width={section.width}")
  try:
    builders.caption_set(config).table(max_length=section.max_length)
  except ValueError as e:
    raise ConfigError(f"config.conditioner.max_length={section.max_length}: {e}") from None
