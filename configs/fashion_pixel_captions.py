"""The pixel-space counterpart of configs/fashion_latent.py, for the latent-vs-pixel comparison.

The same captions, text encoder, schedule, optimizer and batch, diffusing the 16x16 images
themselves: the U-Net gets two more levels (16 -> 8 -> 4 -> 2) so that its
cross-attention sits at the same 4x4 and 2x2 feature maps as the latent model's, and half
the width (32) so that a step costs 2.8x the latent step (XLA's counts at batch 64: 23.2
GFLOP against 7.99 for the latent step and 0.38 for the frozen encoder) instead of about
12x at width 64. Its 1000 steps (23.2 TFLOP) are 92% of the training compute of the latent
recipe's 3000 (25.1 TFLOP; the autoencoder's own 800 steps not counted); the EMA
decay is scaled with the run (0.997: a time constant of a third of it, as 0.999 is of
3000 steps).

    python train.py --config configs/fashion_pixel_captions.py --workdir runs/fashion_pixel
"""

import pathlib

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """configs/fashion_latent.py in pixel space (no autoencoder)."""
  config = load_config_file(pathlib.Path(__file__).with_name("fashion_latent.py"))
  config.autoencoder.latent_channels = None
  config.model.update(base_channels=32, channel_mult=(1, 2, 2, 2))
  config.train.update(num_steps=1000, ema_decay=0.997)
  return config
