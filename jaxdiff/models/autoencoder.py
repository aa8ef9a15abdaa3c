"""The model a KL-autoencoder run trains: `AutoencoderKL` and, optionally, its patch
discriminator, as one module (one parameter tree, one optimizer, one EMA)."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxdiff.models.autoencoder_kl import AutoencoderKL
from jaxdiff.models.discriminator import PatchDiscriminator


def downsampling_factor(autoencoder: AutoencoderKL) -> int:
  """f = 2 ** (number of levels - 1): latents are ``[H / f, W / f, latent_channels]``."""
  return 2 ** (len(autoencoder.block_out_channels) - 1)


class AutoencoderWithDiscriminator(nn.Module):
  """Parameters ``{"autoencoder": ..., "discriminator": ...}`` (no discriminator entry when
  ``discriminator`` is None).

  ``__call__(x, t=None, y=None, *, train=False)`` is the reconstruction from the posterior
  mode (``t`` and ``y`` are accepted, and ignored, so that jaxdiff's trainer initializes it
  like a denoiser). Training uses `jaxdiff.autoencoder.AutoencoderObjective` on the
  parameters directly.
  """

  autoencoder: AutoencoderKL
  discriminator: PatchDiscriminator | None = None

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array | None = None, y: jax.Array | None = None,
               *, train: bool = False) -> jax.Array:
    del t, y, train
    factor = downsampling_factor(self.autoencoder)
    if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f"images must be [B, H, W, C] with H and W divisible by the "
                       f"downsampling factor {factor}, got shape {x.shape}")
    reconstruction = self.autoencoder(x)
    if self.discriminator is not None and self.is_initializing():
      self.discriminator(x)
    return reconstruction
