"""Random-access image sources: a TFDS dataset by name, or in-memory arrays (IDX files).

A source has `len(source)` and `source.read(indices) -> (images, labels)`: a list of uint8
[H, W, C] arrays and int32 labels [n] (or None when the dataset has no labels). Random
access lets every process read only the examples of its own rows of the global batch.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from jaxdiff.data import digits_builder  # pylint: disable=unused-import (registers it)
from jaxdiff.data import idx, words


class ImageSource(Protocol):
  """What the input pipeline reads from."""

  def __len__(self) -> int:
    ...

  def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray | None]:
    ...


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Images uint8 [N, H, W, C] (and labels [N]) held in memory."""

  images: np.ndarray
  labels: np.ndarray | None = None

  def __post_init__(self):
    if self.images.ndim != 4 or self.images.dtype != np.uint8:
      raise ValueError(
          f"ArraySource images must be uint8 [N, H, W, C], got {self.images.dtype} "
          f"{self.images.shape}.")
    if self.labels is not None and self.labels.shape != (len(self.images),):
      raise ValueError(
          f"ArraySource labels shape {self.labels.shape} != ({len(self.images)},).")

  def __len__(self) -> int:
    return len(self.images)

  def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray | None]:
    indices = np.asarray(indices)
    labels = None if self.labels is None else self.labels[indices].astype(np.int32)
    return list(self.images[indices]), labels


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A TFDS array_record data source (from `builder.as_data_source`), decoded by TFDS."""

  data_source: Any
  image_key: str = "image"
  label_key: str | None = "label"

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray | None]:
    records = self.data_source.__getitems__([int(i) for i in indices])
    images = [np.asarray(r[self.image_key]) for r in records]
    labels = None
    if self.label_key is not None:
      labels = np.asarray([r[self.label_key] for r in records], dtype=np.int32)
    return images, labels


def tfds_source(name: str, *, split: str, data_dir: str | None = None,
                download: bool = True) -> TfdsSource:
  """Opens TFDS dataset `name` as an array_record data source (no TensorFlow needed).

  Prepares it into `data_dir` first when `download` and it is not prepared yet (for
  `sklearn_digits`, registered by importing jaxdiff.data, this is offline). Other datasets
  need their TFDS download to work.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"config.data.name={name!r} is not a TFDS dataset: {e}") from e
  if download:
    builder.download_and_prepare(file_format="array_record")
  elif not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir={builder.data_dir!r} and "
        "config.data.download is False.")
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' feature: {list(features)}.")
  label_key = "label" if "label" in features else None
  return TfdsSource(builder.as_data_source(split=split), label_key=label_key)


def make_source(data_config: ml_collections.ConfigDict) -> ImageSource:
  """Builds the source described by `config.data` (source "tfds", "idx" or "words")."""
  if data_config.source == "words":
    return words.WordSource.from_file(data_config.word_list, split=data_config.split,
                                      size=data_config.image_size)
  if data_config.source == "idx":
    images, labels = idx.load_idx_split(data_config.idx_dir, split=data_config.split)
    return ArraySource(images, labels)
  if data_config.source == "tfds":
    return tfds_source(data_config.name, split=data_config.split,
                       data_dir=data_config.data_dir, download=data_config.download)
  raise ValueError(f"config.data.source={data_config.source!r} is not 'tfds', 'idx' or "
                   "'words'.")
