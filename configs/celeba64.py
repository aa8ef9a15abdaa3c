"""DDPM on CelebA at 64x64 (unconditional), as in Song et al.'s DDIM experiments.

Images: TFDS `celeb_a` (178x218), centre-cropped to 178x178 and resized to 64x64 (bicubic);
TFDS needs its manual download of CelebA. Model: 128 base channels, multipliers
(1, 2, 2, 2, 4), attention at 16x16, dropout 0.1. Recipe otherwise Ho et al.'s.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=128, channel_mult=(1, 2, 2, 2, 4), num_res_blocks=2,
                      attention_resolutions=(16,), dropout=0.1)
  config.data.update(name="celeb_a", image_size=64, channels=3, random_flip=True)
  config.train.update(batch_size=128, num_steps=500_000, checkpoint_every=10_000,
                      sample_every=50_000)
  return config
