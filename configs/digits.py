"""The default job: a small DDPM on scikit-learn's 8x8 handwritten digits (CPU, minutes).

Data: the `sklearn_digits` TFDS dataset that jaxdiff builds offline (1797 images, 17 gray
levels), at its native 8x8. Same recipe as Ho et al. (eps prediction, L_simple, linear
schedule, Adam, warmup, clipping, EMA) with T = 500 (the same noise process on a
coarser grid, halving the sampling chain), a tiny U-Net, a larger learning rate and a faster
EMA, so that training and a 64-sample DDPM grid take minutes on a 2-core CPU.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=1, dropout=0.0, num_groups=8)
  config.diffusion.update(num_timesteps=500, variance="fixed_small")
  config.data.update(name="sklearn_digits", image_size=8, channels=1)
  config.train.update(batch_size=64, num_steps=1500, learning_rate=1e-3, warmup_steps=100,
                      ema_decay=0.995, log_every=100, checkpoint_every=500,
                      keep_checkpoints=2)
  config.sample.update(num_samples=64)
  return config
