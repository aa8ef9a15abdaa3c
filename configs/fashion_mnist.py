"""DDPM on Fashion-MNIST (28x28 gray), read offline from local IDX files.

By default the IDX files come from Debian's dataset-fashion-mnist package
(/usr/share/datasets/fashion-mnist). To use TFDS instead:
`--config.data.source=tfds --config.data.name=fashion_mnist`.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                      attention_resolutions=(7,), num_heads=1, dropout=0.1, num_groups=32)
  config.data.update(source="idx", idx_dir="/usr/share/datasets/fashion-mnist",
                     name="fashion_mnist", image_size=28, channels=1)
  config.train.update(batch_size=128, num_steps=100_000, learning_rate=2e-4,
                      warmup_steps=1000, ema_decay=0.9995, checkpoint_every=5000,
                      sample_every=10_000)
  return config
