"""The KL-regularized autoencoder of latent diffusion (Rombach et al. 2022) on Fashion-MNIST.

`python train.py --config configs/fashion_autoencoder.py --workdir runs/fashion_ae` trains
jaxdiff's `AutoencoderKL` (diffusers' layout: ResNet blocks, a middle attention block) with
f = 4 on 16x16 images (Fashion-MNIST resized from 28x28, so that it trains in minutes on a
shared 2-core CPU): latents 4x4x4. The objective is
`jaxdiff.autoencoder`'s: pixel L1 summed over pixels + 1e-6 KL to N(0, I); the patch
discriminator with adaptive weight is off here (`--config.autoencoder.disc_weight=0.5
--config.autoencoder.disc_start=N` turns it on). Reconstruction grids (test images above
their reconstructions) go to WORKDIR/reconstructions/step_N.png. Minutes on a 2-core CPU.

Data: the IDX files of Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist);
`--config.data.source=tfds --config.data.name=fashion_mnist` reads TFDS instead.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config(model="autoencoder_kl")
  config.model.update(in_channels=1, out_channels=1, block_out_channels=(16, 32, 32),
                      down_block_types=("DownEncoderBlock2D",) * 3,
                      up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1,
                      latent_channels=4, norm_num_groups=8)
  config.data.update(source="idx", idx_dir="/usr/share/datasets/fashion-mnist",
                     name="fashion_mnist", image_size=16, channels=1)
  config.autoencoder.update(reconstruction="l1", kl_weight=1e-6, disc_weight=0.0)
  # Summed-over-pixel losses have large gradients: no global-norm clip (Adam rescales).
  config.train.update(batch_size=32, num_steps=800, learning_rate=1e-3, warmup_steps=50,
                      grad_clip=0.0, ema_decay=0.99, log_every=50, checkpoint_every=200,
                      keep_checkpoints=2, sample_every=400)
  return config
