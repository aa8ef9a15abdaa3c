"""Latent diffusion with caption cross-attention on Fashion-MNIST (Rombach et al. 2022).

Needs a trained autoencoder (configs/fashion_autoencoder.py):

    python train.py --config configs/fashion_autoencoder.py --workdir runs/fashion_ae
    python train.py --config configs/fashion_latent.py --workdir runs/fashion_latent \\
        --config.autoencoder.workdir=runs/fashion_ae
    python sample.py --workdir runs/fashion_latent --prompt "large dark ankle boot"

Training images (16x16, the autoencoder's size) are encoded by the frozen autoencoder
(4x4x4 latents, sampled from its posterior) and scaled to unit variance by a factor
measured on 2048 training images at the start; both are recorded in the run's config.json. The U-Net cross-attends, at 4x4 and
2x2, to a small trained text encoder's embedding of captions built from the class names and
two measured attributes (`jaxdiff.data.captions`: "[small|large] [dark|bright] <class>");
10% of captions are emptied for classifier-free guidance. sample.py decodes the latents.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), num_head_channels=32, dropout=0.0,
                      num_groups=16, context_dim=64, transformer_resolutions=(4, 2))
  config.conditioner.update(name="text", captions="fashion_mnist", max_length=5, width=64,
                            depth=2, num_heads=4)
  config.autoencoder.update(latent_channels=4)  # + workdir=DIR on the command line
  config.diffusion.update(num_timesteps=1000, schedule="linear", variance="fixed_small")
  config.data.update(source="idx", idx_dir="/usr/share/datasets/fashion-mnist",
                     name="fashion_mnist", image_size=16, channels=1)
  config.train.update(batch_size=64, num_steps=3000, learning_rate=5e-4, warmup_steps=200,
                      ema_decay=0.999, label_dropout=0.1, log_every=100,
                      checkpoint_every=1000, keep_checkpoints=2, sample_every=0)
  config.sample.update(sampler="ddim", num_steps=50, guidance_scale=3.0, num_samples=40)
  return config
