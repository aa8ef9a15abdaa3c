"""Karras et al. (2022), CIFAR-10 (unconditional, 32x32): EDM's training recipe (GPU scale).

Preconditioning and loss of Table 1: sigma_data = 0.5, ln(sigma) ~ N(-1.2, 1.2^2), lambda =
1 / c_out^2. Training (App. F.1, "config F" of Table 7 with the DDPM++ network): batch 512,
Adam (0.9, 0.999, eps 1e-8) at lr 1e-3 ramped up linearly over 10 Mimg (19,531 steps), no
gradient clipping, EMA half-life 0.5 Mimg (decay 0.5^(512 / 500,000) = 0.99929 per step),
200 Mimg (390,625 steps), dropout 0.13. Network: the jaxdiff U-Net at DDPM++'s size (128
channels, multipliers (2, 2, 2), four residual blocks per resolution, attention at 16x16).
Sampling: Algorithm 1, 18 levels of eq. 5 between 0.002 and 80 with rho = 7 (35
evaluations; `--config.sample.num_steps`). Not reproduced: DDPM++'s exact blocks (FIR
resampling, its skip scaling) and the non-leaky geometric augmentation (p = 0.12), which
the paper's FID of 1.97 uses; random flips stand in for the augmentation.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=128, channel_mult=(2, 2, 2), num_res_blocks=4,
                      attention_resolutions=(16,), dropout=0.13)
  config.diffusion.update(objective="edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.5,
                          p_mean=-1.2, p_std=1.2)
  config.data.update(name="cifar10", image_size=32, channels=3, random_flip=True)
  config.train.update(batch_size=512, learning_rate=1e-3, warmup_steps=19_531,
                      num_steps=390_625, grad_clip=0.0, ema_decay=0.5 ** (512 / 500_000),
                      checkpoint_every=10_000, sample_every=50_000, keep_checkpoints=3)
  config.sample.update(sampler="edm_heun", num_steps=18)
  return config
