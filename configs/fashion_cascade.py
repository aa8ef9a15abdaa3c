"""The base stage of a two-stage cascade on Fashion-MNIST (Ho et al. 2022, CDM): an
unconditional 14x14 model, followed by the 14x14 -> 28x28 super-resolution stage of
configs/fashion_sr.py (trained with noise-conditioning augmentation).

    python train.py --config configs/fashion_cascade.py --workdir runs/cascade_base
    python train.py --config configs/fashion_sr.py --workdir runs/fashion_sr
    python sample.py --workdir runs/cascade_base --cascade runs/fashion_sr --aug_level 0.1

sample.py runs the stages end to end: the base model's samples are the conditions of the
next stage (noised to --aug_level), whose resolutions must chain (checked before compiling).
The 14x14 training images are the 28x28 ones resized by the input pipeline (Pillow bicubic).
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=8)
  config.diffusion.update(schedule="cosine", num_timesteps=1000, variance="fixed_small")
  config.data.update(source="idx", idx_dir="/usr/share/datasets/fashion-mnist",
                     name="fashion_mnist", image_size=14, channels=1)
  config.train.update(batch_size=32, num_steps=500, learning_rate=2e-3, warmup_steps=50,
                      ema_decay=0.995, log_every=100, checkpoint_every=500,
                      keep_checkpoints=2)
  config.sample.update(sampler="ddim", num_steps=50, num_samples=64)
  return config
