"""Masked diffusion in continuous time (MD4, Shi et al. 2024; MDLM, Sahoo et al. 2024) on
the digits' 17 gray levels (CPU, minutes).

Each pixel is a category 0..16, masked (token 17) by time t with probability 1 - alpha(t),
alpha(t) = 1 - t (`--config.diffusion.masking=cosine` or `poly`). The U-Net reads x_t one-hot
(18 channels) and t * 999, and returns 17 logits per pixel; the loss is the continuous-time
ELBO, a 1/t-weighted cross-entropy over the masked pixels. Sampling unmasks in
`--config.sample.num_steps` steps (default 100) with the "unmask" sampler.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(out_channels=17, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=1, dropout=0.0, num_groups=8)
  config.diffusion.update(objective="masked", num_categories=17, masking="linear")
  config.data.update(name="sklearn_digits", image_size=8, channels=1)
  config.train.update(batch_size=64, num_steps=2000, learning_rate=1e-3, warmup_steps=100,
                      ema_decay=0.995, log_every=100, checkpoint_every=500,
                      keep_checkpoints=2)
  config.sample.update(sampler="unmask", num_samples=64, num_steps=100)
  config.eval.update(metrics=("bpd", "classifier_fd"))
  return config
