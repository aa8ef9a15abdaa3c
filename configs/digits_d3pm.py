"""D3PM (Austin et al. 2021) on the digits' 17 gray levels as categories (CPU, minutes).

Data: scikit-learn's 8x8 digits (`sklearn_digits`), whose gray levels 0..16 are the K = 17
categories. The U-Net reads x_t one-hot (17 channels) and returns 17 logits per pixel
(out_channels = K * channels), the x0-parameterization of the reverse chain; the loss is the
hybrid L_vb + 0.001 CE over T = 1000 steps. The default kernel is the uniform one
(multinomial diffusion) with the cosine schedule (measured in the README); the others:

    --config.diffusion.kernel=absorbing --config.diffusion.kernel_schedule=jsd
    --config.diffusion.kernel=gaussian --config.diffusion.kernel_schedule=linear

Sampling is ancestral over the whole chain ("d3pm").
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(out_channels=17, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=1, dropout=0.0, num_groups=8)
  config.diffusion.update(objective="d3pm", num_categories=17, num_timesteps=1000,
                          kernel="uniform", kernel_schedule="cosine", discrete_loss="hybrid",
                          hybrid_coeff=0.001)
  config.data.update(name="sklearn_digits", image_size=8, channels=1)
  config.train.update(batch_size=64, num_steps=2000, learning_rate=1e-3, warmup_steps=100,
                      ema_decay=0.995, log_every=100, checkpoint_every=500,
                      keep_checkpoints=2)
  config.sample.update(sampler="d3pm", num_samples=64)
  config.eval.update(metrics=("bpd", "classifier_fd"))
  return config
