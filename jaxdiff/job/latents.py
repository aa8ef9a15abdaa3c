"""Latent diffusion in a run (Rombach et al. 2022): the frozen autoencoder a run names, its
scale factor, encoding of training batches and decoding of samples; and the reconstruction
grids of an autoencoder run.

A latent run sets `config.autoencoder.workdir` (the train.py workdir of a run with
`config.model.name="autoencoder_kl"`). `resolve_config` checks that run before anything is
compiled and records in the config (and so in the run's config.json) its absolute path,
checkpoint step, latent channels and downsampling factor f; `load_coder` measures the scale
factor when the config has none: 1 / std of the latents of `scale_examples` training images
(Rombach et al.'s rescaling to unit variance, Sec. 4.3.2 and App. G), recorded likewise. A
resumed run or a sampling job that names another autoencoder, or finds the recorded one
changed, stops with a one-line ValueError.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from etils import epath

from jaxdiff import images as images_lib
from jaxdiff import parallel
from jaxdiff.config import builders, latent_checks
from jaxdiff.config.errors import ConfigError
from jaxdiff.evaluation.datasets import load_images
from jaxdiff.job import checkpoints
from jaxdiff.models.autoencoder import downsampling_factor
from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.posterior import DiagonalGaussian


@struct.dataclass
class LatentCoder:
  """A frozen autoencoder with its (EMA) parameters and the latent scale factor: a pytree,
  so jitted functions take it as an argument (the parameters are traced)."""

  params: Any
  scale_factor: jax.Array
  autoencoder: AutoencoderKL = struct.field(pytree_node=False)
  sample_posterior: bool = struct.field(pytree_node=False, default=True)

  def encode(self, images: jax.Array, key: jax.Array) -> jax.Array:
    """scale_factor * z, z ~ q(z | x) (or its mean), of images [B, H, W, C] in [-1, 1]."""
    mean, logvar = self.autoencoder.apply({"params": self.params}, images,
                                          method=AutoencoderKL.encode)
    posterior = DiagonalGaussian(mean, logvar)
    z = posterior.sample(key) if self.sample_posterior else posterior.mode()
    return self.scale_factor * z

  def decode(self, latents: jax.Array) -> jax.Array:
    """Images in [-1, 1] of scaled latents (decode(latents / scale_factor), clipped)."""
    images = self.autoencoder.apply({"params": self.params}, latents / self.scale_factor,
                                    method=AutoencoderKL.decode)
    return jnp.clip(images, -1.0, 1.0)


def _checkpoint_steps(workdir: str) -> list[int]:
  directory = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _autoencoder_config(workdir: str) -> ml_collections.ConfigDict:
  """The config of the autoencoder run in `workdir`, or a one-line ValueError."""
  try:
    config = checkpoints.read_config(workdir)
  except FileNotFoundError:
    raise ConfigError(f"config.autoencoder.workdir={workdir!r} has no config.json: not a "
                     "train.py run of an autoencoder") from None
  if config.model.name != "autoencoder_kl":
    raise ConfigError(f"config.autoencoder.workdir={workdir!r} is a {config.model.name!r} run, "
                     "not an autoencoder (config.model.name='autoencoder_kl')")
  return config


def _recorded(config: ml_collections.ConfigDict, workdir: Any) -> ml_collections.ConfigDict | None:
  """The autoencoder section recorded by an earlier start of the run in `workdir`."""
  if workdir is None or not (epath.Path(workdir) / checkpoints.CONFIG_FILE).exists():
    return None
  saved = checkpoints.read_config(workdir)
  return saved.autoencoder if builders.is_latent(saved) else None


def _check_recorded(section: ml_collections.ConfigDict,
                    recorded: ml_collections.ConfigDict | None) -> None:
  """A resumed run keeps its autoencoder: same workdir; its step and scale taken over."""
  if recorded is None:
    return
  if os.path.abspath(recorded.workdir) != section.workdir:
    raise ConfigError(f"config.autoencoder.workdir={section.workdir!r}, but this run was "
                     f"trained on the latents of {recorded.workdir!r}; resume with that one")
  for field in ("step", "scale_factor"):
    if section[field] is None:
      section[field] = recorded[field]
    elif section[field] != recorded[field]:
      raise ConfigError(f"config.autoencoder.{field}={section[field]}, but this run recorded "
                       f"{recorded[field]}")


def resolve_config(config: ml_collections.ConfigDict, *,
                   workdir: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
  """Checks the autoencoder run of a latent config and records its path, step, latent
  channels and factor f in `config` (returned); a pixel-space config comes back as it is.

  `workdir` is the run's own workdir: when it holds an earlier start of the run, the
  autoencoder must be the one recorded there (its step and scale factor are taken over).
  Reads config files only. Raises ValueError (one line) on a missing or other autoencoder.
  """
  if not builders.is_latent(config):
    return config
  latent_checks.validate_latent(config)
  section = config.autoencoder
  section.workdir = os.path.abspath(section.workdir)
  _check_recorded(section, _recorded(config, workdir))
  ae_config = _autoencoder_config(section.workdir)
  channels = ae_config.model.latent_channels
  factor = 2 ** (len(ae_config.model.block_out_channels) - 1)
  for field, value in (("latent_channels", channels), ("downsampling_factor", factor)):
    if section[field] is not None and section[field] != value:
      raise ConfigError(f"config.autoencoder.{field}={section[field]}, but the autoencoder in "
                       f"{section.workdir!r} has {field}={value}")
  if ae_config.data.channels != config.data.channels or config.data.image_size % factor:
    raise ConfigError(f"the autoencoder in {section.workdir!r} codes images of "
                     f"{ae_config.data.channels} channels in blocks of {factor}x{factor}; "
                     f"config.data has channels={config.data.channels}, image_size="
                     f"{config.data.image_size}")
  steps = _checkpoint_steps(section.workdir)
  if section.step is None and steps:
    section.step = steps[-1]
  if section.step not in steps:
    raise ConfigError(f"the autoencoder in {section.workdir!r} has no checkpoint "
                     f"{section.step if section.step is not None else ''} (steps: {steps})")
  section.update(latent_channels=channels, downsampling_factor=factor)
  return config


@functools.lru_cache(maxsize=4)
def _restore(workdir: str, step: int, mesh: jax.sharding.Mesh) -> tuple[AutoencoderKL, Any]:
  """The autoencoder module and EMA parameters of a run's checkpoint, replicated."""
  config, restored = checkpoints.load_workdir(workdir, step=step,
                                              sharding=parallel.replicated(mesh))
  module = builders.build_autoencoder(config).autoencoder
  return module, restored.state.ema_params["autoencoder"]


def load_coder(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> LatentCoder:
  """The LatentCoder of a resolved latent config (cached per autoencoder checkpoint).

  Re-checks the autoencoder against what the run recorded; the scale factor must be
  recorded (see `measure_scale_factor`)."""
  section = config.autoencoder
  resolve_config(config)  # raises if the autoencoder run changed since it was recorded
  if section.scale_factor is None:
    raise ConfigError("config.autoencoder.scale_factor is not recorded; measure it with "
                     "jaxdiff.job.latents.measure_scale_factor")
  module, params = _restore(section.workdir, section.step, mesh)
  return LatentCoder(params=params, scale_factor=jnp.float32(section.scale_factor),
                     autoencoder=module, sample_posterior=section.sample_posterior)


@jax.jit
def _encode(coder: LatentCoder, images: jax.Array, key: jax.Array) -> jax.Array:
  return coder.encode(images, key)


def latent_statistics(coder: LatentCoder, images: np.ndarray, *, key: jax.Array,
                      batch_size: int = 256) -> dict[str, Any]:
  """Unscaled latents of `images`: overall std, per-channel mean and std."""
  unit = coder.replace(scale_factor=jnp.float32(1.0))
  latents = np.concatenate([
      np.asarray(_encode(unit, images[start:start + batch_size],
                         jax.random.fold_in(key, start)))
      for start in range(0, len(images), batch_size)])
  axes = tuple(range(latents.ndim - 1))
  return {"std": float(latents.std()), "mean": float(latents.mean()),
          "channel_mean": latents.mean(axis=axes).tolist(),
          "channel_std": latents.std(axis=axes).tolist(), "shape": list(latents.shape[1:])}


def measure_scale_factor(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
                         ) -> dict[str, Any]:
  """Records `config.autoencoder.scale_factor` = 1 / std of the latents of the first
  `scale_examples` training images (when not yet recorded); returns their statistics."""
  section = config.autoencoder
  module, params = _restore(section.workdir, section.step, mesh)
  coder = LatentCoder(params=params, scale_factor=jnp.float32(1.0), autoencoder=module,
                      sample_posterior=section.sample_posterior)
  images, _ = load_images(config.data, max_examples=section.scale_examples)
  stats = latent_statistics(coder, images, key=jax.random.PRNGKey(config.train.seed))
  if section.scale_factor is None:
    section.scale_factor = 1.0 / stats["std"]
  return stats


def training_coder(config: ml_collections.ConfigDict,
                   mesh: jax.sharding.Mesh) -> LatentCoder | None:
  """The coder a latent run trains with (None for a pixel-space run): on a fresh start the
  scale factor is measured first and the latent statistics printed."""
  if not builders.is_latent(config):
    return None
  if config.autoencoder.scale_factor is None:
    stats = measure_scale_factor(config, mesh)
    if jax.process_index() == 0:
      print(f"Latents of {config.autoencoder.workdir} (step {config.autoencoder.step}): "
            f"scale_factor {config.autoencoder.scale_factor:.4f}, {stats}", flush=True)
  return load_coder(config, mesh)


def reconstruction_grid(config: ml_collections.ConfigDict, model: Any,
                        params: Any) -> np.ndarray:
  """uint8 [2N, H, W, C]: `num_reconstructions` held-out images (the "test" split, else the
  training split) followed by their reconstructions from the posterior mean, for the grids
  of an autoencoder run."""
  count = config.autoencoder.num_reconstructions
  try:
    images, _ = load_images(config.data, split="test", max_examples=count)
  except (ValueError, KeyError, FileNotFoundError):  # a data set without a test split
    images, _ = load_images(config.data, max_examples=count)
  recon = jax.jit(model.apply)({"params": params}, images)
  return images_lib.to_uint8(np.concatenate([images, np.asarray(recon)]))
