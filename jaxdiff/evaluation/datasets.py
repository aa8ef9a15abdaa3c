"""Real images for evaluation, prepared exactly as training sees them.

Reads `config.data`'s source (`jaxdiff.data.make_source`) with an optional other split
(TFDS split syntax, e.g. "test" or "test[:100]"), centre-crops and resizes each image to
`config.data.image_size` and maps it to [-1, 1] (`images.from_uint8`), as the training
pipeline does.
"""

from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from jaxdiff import data
from jaxdiff import images as images_lib


def load_images(data_config: ml_collections.ConfigDict, *, split: Optional[str] = None,
                max_examples: Optional[int] = None, chunk: int = 1024
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """(images float32 [N, S, S, C] in [-1, 1], int32 labels [N] or None) of a data split.

  `split` defaults to `data_config.split`; `max_examples` keeps the first N examples.
  """
  data_config = data_config.copy_and_resolve_references()
  if split is not None:
    data_config.split = split
  source = data.make_source(data_config)
  count = len(source) if max_examples is None else min(max_examples, len(source))
  if count < 1:
    raise ValueError(f"dataset {data_config.name!r} split {data_config.split!r} is empty")
  images, labels = [], []
  for start in range(0, count, chunk):
    batch, batch_labels = source.read(list(range(start, min(start + chunk, count))))
    for image in batch:
      if image.ndim != 3 or image.shape[-1] != data_config.channels:
        raise ValueError(f"dataset image of shape {image.shape} does not match "
                         f"config.data.channels={data_config.channels}")
    images.extend(data.center_crop_resize(image, size=data_config.image_size)
                  for image in batch)
    labels.append(batch_labels)
  has_labels = all(part is not None for part in labels)
  return (images_lib.from_uint8(np.stack(images)),
          np.concatenate(labels).astype(np.int32) if has_labels else None)
