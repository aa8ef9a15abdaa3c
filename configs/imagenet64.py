"""Class-conditional ImageNet 64x64 with classifier-free guidance.

Model: Dhariwal & Nichol (2021)'s ImageNet-64 U-Net (192 channels, (1, 2, 3, 4),
3 blocks, attention at 32/16/8 with 64-channel heads, scale-shift norm, resblock
up/downsampling, learned variance), trained as Nichol & Dhariwal's improved DDPM (cosine
schedule, T = 4000, hybrid loss) with labels dropped to the null label with probability
0.1 (Ho & Salimans 2022). Sampling: 250 respaced steps, guidance scale s = 1.3 (w = 0.3 in
Ho & Salimans' notation). bfloat16 compute. Data: TFDS `imagenet_resized/64x64` (needs the
ImageNet download TFDS asks for). Add `--config.train.shard_params=True` to shard the
parameters and optimizer state over the devices (FSDP style).
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
                      attention_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.1,
                      use_scale_shift_norm=True, resblock_updown=True, num_classes=1000,
                      learn_sigma=True, dtype="bfloat16")
  config.diffusion.update(schedule="cosine", num_timesteps=4000, loss_type="hybrid",
                          variance="learned_range")
  config.data.update(name="imagenet_resized/64x64", image_size=64, channels=3,
                     random_flip=True)
  config.train.update(batch_size=2048, num_steps=540_000, learning_rate=3e-4,
                      warmup_steps=1000, label_dropout=0.1, checkpoint_every=5000,
                      sample_every=50_000)
  config.sample.update(sampler="ddpm", num_steps=250, guidance_scale=1.3)
  config.eval.update(bpd_split="validation")  # imagenet_resized has no "test" split.
  return config
