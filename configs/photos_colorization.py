"""Palette colorization (Saharia et al. 2022) on 16x16 patches of the colour photographs that
scikit-learn and scikit-image ship (`jaxdiff.data.photos`, offline: 4160 train and 1007
test patches): the condition is the luminance of the patch.

    python train.py --config configs/photos_colorization.py --workdir runs/colorization
    python sample.py --workdir runs/colorization   # test patches: gray | colour | reference

Other Palette tasks are a field away: `--config.data.task.name=inpainting` (with
`--config.model.condition_channels=4`, `--config.data.task.mask=free_form`), `uncropping`,
`jpeg_restoration` (`condition_channels=3`).
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.model.update(base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=8,
                      condition_channels=1)
  # v-prediction, as configs/fashion_sr.py (where it beat eps-prediction by 1.7 dB).
  config.diffusion.update(schedule="cosine", num_timesteps=1000, variance="fixed_small",
                          prediction="v")
  config.data.update(source="photos", name="photos", image_size=16, channels=3,
                     random_flip=True)
  config.data.task.update(name="colorization")
  config.train.update(batch_size=32, num_steps=3000, learning_rate=2e-3, warmup_steps=50,
                      ema_decay=0.995, log_every=100, checkpoint_every=1000,
                      keep_checkpoints=2)
  config.sample.update(sampler="ddpm", num_steps=100, num_samples=64)
  return config
