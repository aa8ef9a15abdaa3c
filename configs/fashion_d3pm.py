"""D3PM on Fashion-MNIST quantized to K = 16 gray levels, from local IDX files.

The 8-bit pixels are rounded to the nearest of 16 evenly spread levels
(`config.data.quantize`, `jaxdiff.discrete.levels`), the ordinal categories of the
discretized Gaussian kernel (Austin et al. 2021, App. A.2.1) with linear betas. The IDX files
come from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), as for
configs/fashion_mnist.py. GPU scale: a CPU takes hours.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(out_channels=16, base_channels=64, channel_mult=(1, 2, 2),
                      num_res_blocks=2, attention_resolutions=(7,), num_heads=1, dropout=0.1,
                      num_groups=32)
  config.diffusion.update(objective="d3pm", num_categories=16, num_timesteps=1000,
                          kernel="gaussian", kernel_schedule="linear", discrete_loss="hybrid",
                          hybrid_coeff=0.001)
  config.data.update(source="idx", idx_dir="/usr/share/datasets/fashion-mnist",
                     name="fashion_mnist", image_size=28, channels=1, quantize=True)
  config.train.update(batch_size=128, num_steps=100_000, learning_rate=2e-4,
                      warmup_steps=1000, ema_decay=0.9995, checkpoint_every=5000,
                      sample_every=10_000)
  config.sample.update(sampler="d3pm")
  return config
