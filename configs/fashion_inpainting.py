"""Palette inpainting (Saharia et al. 2022) on Fashion-MNIST 28x28 with free-form masks.

The condition is the masked image (missing pixels 0) with the mask as a second channel
(`jaxdiff.data.tasks`: 2 to 4 brush strokes, DeepFill v2's free-form masks), concatenated
to x_t; `--config.data.task.mask=box` trains rectangular holes, `task.name=uncropping`
outpainting. The sampler keeps the known pixels (the runner's inpainting replacement).

    python train.py --config configs/fashion_inpainting.py --workdir runs/fashion_inpainting
    python sample.py --workdir runs/fashion_inpainting   # masked input | output | reference
    python -m jaxdiff.evaluate --workdir runs/fashion_inpainting \\
        --metrics restoration,classifier_fd --samples runs/fashion_inpainting/samples_....npz

Fashion-MNIST comes from Debian's dataset-fashion-mnist (apt-get install
dataset-fashion-mnist), IDX files under /usr/share/datasets/fashion-mnist.
"""

import pathlib

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  """configs/fashion_sr.py's U-Net, schedule, data and optimizer, with the inpainting task."""
  config = load_config_file(pathlib.Path(__file__).with_name("fashion_sr.py"))
  config.model.update(condition_channels=2, aug_level_embedding=False)
  config.data.task.update(name="inpainting", mask="free_form", augment_max=0.0)
  config.train.update(num_steps=3000, log_every=250, checkpoint_every=1000)
  return config
