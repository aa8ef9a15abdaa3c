"""An f = 8 KL autoencoder on CelebA 64x64 colour images (Rombach et al. 2022's KL-f8 recipe).

For users with internet and TFDS (CelebA needs TFDS's manual download):

    python train.py --config configs/celeba64_autoencoder.py --workdir runs/celeba_ae
    python -m jaxdiff.evaluate --workdir runs/celeba_ae --metrics reconstruction

Encoder and decoder as the paper's KL-f8 (channels 128, 256, 512, 512, two ResNet blocks a
level, a middle attention block), 4 latent channels: 64x64x3 images become 8x8x4 latents.
Objective: pixel L1 + 1e-6 KL, and the patch discriminator with adaptive weight 0.5 from
step 50,000 (the paper's disc_start); no LPIPS term (it needs downloaded VGG weights), so
reconstructions are blurrier than the paper's. A latent model on its codes: any diffusion
config with configs/celeba64.py's data section and --config.autoencoder.workdir=runs/celeba_ae
(the U-Net then sees 8x8x4 latents).
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config(model="autoencoder_kl")
  config.model.update(in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512),
                      down_block_types=("DownEncoderBlock2D",) * 4,
                      up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                      latent_channels=4, norm_num_groups=32)
  config.data.update(source="tfds", name="celeb_a", image_size=64, channels=3,
                     random_flip=True)
  config.autoencoder.update(reconstruction="l1", kl_weight=1e-6, disc_weight=0.5,
                            disc_start=50_000, disc_channels=64, disc_layers=3)
  config.train.update(batch_size=32, num_steps=200_000, learning_rate=4.5e-6 * 32,
                      warmup_steps=1000, grad_clip=0.0, ema_decay=0.999, log_every=100,
                      checkpoint_every=10_000, keep_checkpoints=2, sample_every=10_000)
  return config
