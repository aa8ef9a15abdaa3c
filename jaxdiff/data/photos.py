"""A small offline colour dataset: square patches of the photographs that scikit-learn and
scikit-image ship.

The photographs: scikit-learn's two (`sklearn.datasets.load_sample_images()`: china.jpg
and flower.jpg, 427x640) and the five colour photographs of natural scenes bundled with
scikit-image (`skimage.data`: astronaut 512x512, chelsea 300x451, coffee 400x600, rocket
427x640, and the left view of the stereo motorcycle pair, 500x741; its right view is left
out, as it shows the same scene). Patches of ``PATCH`` x ``PATCH`` pixels are cut on a
grid of stride ``STRIDE``; the "train" split holds the patches that lie entirely in the
left ``TRAIN_FRACTION`` of a photograph's width and the "test" split those entirely right
of it, so that no test pixel is seen in training (4160 train and 1007 test patches). The
input pipeline resizes them to ``config.data.image_size`` (Pillow bicubic, antialiased).
"""

from __future__ import annotations

import os

import numpy as np

PATCH = 64
STRIDE = 16
TRAIN_FRACTION = 0.75
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                  "motorcycle_left.png")


def photographs() -> list[np.ndarray]:
  """The seven uint8 RGB photographs [H, W, 3], scikit-learn's first."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import skimage  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top

  folder = os.path.join(os.path.dirname(skimage.__file__), "data")
  bundled = [np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))
             for name in SKIMAGE_PHOTOS]
  return list(load_sample_images().images) + bundled


def photo_patches(*, split: str) -> np.ndarray:
  """uint8 [N, PATCH, PATCH, 3] patches of the split ("train" or "test")."""
  if split not in ("train", "test"):
    raise ValueError(f"photos split {split!r} is not 'train' or 'test'")
  patches = []
  for photo in photographs():
    height, width, _ = photo.shape
    split_column = int(TRAIN_FRACTION * width)
    for left in range(0, width - PATCH + 1, STRIDE):
      inside = left + PATCH <= split_column if split == "train" else left >= split_column
      if not inside:
        continue
      for top in range(0, height - PATCH + 1, STRIDE):
        patches.append(photo[top:top + PATCH, left:left + PATCH])
  return np.stack(patches).astype(np.uint8)
