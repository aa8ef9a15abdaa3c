"""A small offline colour dataset: square patches of scikit-learn's two sample photographs.

`sklearn.datasets.load_sample_images()` ships two 427x640 RGB photographs (china.jpg and
flower.jpg). Patches of ``PATCH`` x ``PATCH`` pixels are cut on a grid of stride
``STRIDE``; the "train" split holds the patches that lie entirely left of column
``SPLIT_COLUMN`` and the "test" split those entirely right of it, so that no test pixel is
seen in training (1242 train and 322 test patches). The input pipeline resizes them to
``config.data.image_size`` (Pillow bicubic, antialiased).
"""

from __future__ import annotations

import numpy as np

PATCH = 64
STRIDE = 16
SPLIT_COLUMN = 480


def photo_patches(*, split: str) -> np.ndarray:
  """uint8 [N, PATCH, PATCH, 3] patches of the split ("train" or "test")."""
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top

  if split not in ("train", "test"):
    raise ValueError(f"photos split {split!r} is not 'train' or 'test'")
  patches = []
  for photo in load_sample_images().images:
    height, width, _ = photo.shape
    for left in range(0, width - PATCH + 1, STRIDE):
      inside = left + PATCH <= SPLIT_COLUMN if split == "train" else left >= SPLIT_COLUMN
      if not inside:
        continue
      for top in range(0, height - PATCH + 1, STRIDE):
        patches.append(photo[top:top + PATCH, left:left + PATCH])
  return np.stack(patches).astype(np.uint8)
