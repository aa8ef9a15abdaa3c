"""Ho et al. (2020), CIFAR-10 (unconditional, 32x32): the paper's model and recipe.

Model (App. B): 35.7M parameters, 128 base channels, multipliers (1, 2, 2, 2), two residual
blocks per resolution, self-attention at 16x16, dropout 0.1, GroupNorm(32). Diffusion:
linear betas 1e-4..0.02, T = 1000, eps prediction, L_simple, sampling variance sigma^2 =
beta_t. Training: Adam, lr 2e-4 with 5000 warmup steps, global-norm clip 1, batch 128,
random horizontal flips, EMA 0.9999, 800k steps. Data: TFDS `cifar10`.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()  # The schema's defaults are this recipe.
  config.data.update(name="cifar10", image_size=32, channels=3, random_flip=True)
  config.train.update(checkpoint_every=10_000, sample_every=50_000, keep_checkpoints=3)
  return config
