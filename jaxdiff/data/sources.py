"""Random-access image sources: a TFDS dataset by name, or in-memory arrays (IDX files).

A source has `len(source)`, `source.num_classes` (the number of label values, None when
the dataset has no labels) and `source.read(indices) -> (images, labels)`: a list of uint8
[H, W, C] arrays and int32 labels [n] (or None when the dataset has no labels). Random
access lets every process read only the examples of its own rows of the global batch.
"""

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from jaxdiff.data import digits_builder  # pylint: disable=unused-import (registers it)
from jaxdiff.data import idx, photos, words


class ImageSource(Protocol):
  """What the input pipeline reads from."""

  @property
  def num_classes(self) -> int | None:
    ...

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

  @property
  def num_classes(self) -> int | None:
    return None if self.labels is None or not len(self.labels) else int(self.labels.max()) + 1

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
  num_classes: int | None = None

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray | None]:
    records = self.data_source.__getitems__([int(i) for i in indices])
    images = [np.asarray(r[self.image_key]) for r in records]
    labels = None
    if self.label_key is not None:
      labels = np.asarray([r[self.label_key] for r in records], dtype=np.int32)
    return images, labels


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  """Holds an exclusive flock on `path` (waiting for it); a no-op on object stores."""
  if "://" in path:
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepare(builder: Any) -> None:
  """`download_and_prepare` by one process at a time: process 0 first while the others of
  a multi-process job wait, then the others (a no-op on a shared data_dir), each under a
  file lock beside the dataset, which also serialises separate jobs on one data_dir."""
  lock = os.path.join(os.path.dirname(os.fspath(builder.data_dir)), ".prepare.lock")

  def prepare() -> None:
    with _file_lock(lock):
      builder.download_and_prepare(file_format="array_record")

  if jax.process_index() == 0:
    prepare()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"jaxdiff_tfds_prepare_{builder.name}")
    if jax.process_index() != 0:
      prepare()


def tfds_source(name: str, *, split: str, data_dir: str | None = None,
                download: bool = True) -> TfdsSource:
  """Opens TFDS dataset `name` as an array_record data source (no TensorFlow needed).

  Prepares it into `data_dir` first when `download` and it is not prepared yet (for
  `sklearn_digits`, registered by importing jaxdiff.data, this is offline; see `_prepare`
  for concurrent launches). Other datasets need their TFDS download to work.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"config.data.name={name!r} is not a TFDS dataset: {e}") from e
  if download:  # Every process calls it (a barrier in multi-process jobs).
    _prepare(builder)
    # Reopened: a builder made before another process prepared the data has no splits.
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  elif not builder.is_prepared():
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir={builder.data_dir!r} and "
        "config.data.download is False.")
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"TFDS dataset {name!r} has no 'image' feature: {list(features)}.")
  label_key = "label" if "label" in features else None
  num_classes = getattr(features[label_key], "num_classes", None) if label_key else None
  return TfdsSource(builder.as_data_source(split=split), label_key=label_key,
                    num_classes=num_classes)


def make_source(data_config: ml_collections.ConfigDict) -> ImageSource:
  """Builds the source described by `config.data` (source "tfds", "idx", "photos" or
  "words")."""
  if data_config.source == "words":
    return words.WordSource.from_file(data_config.word_list, split=data_config.split,
                                      size=data_config.image_size)
  if data_config.source == "idx":
    images, labels = idx.load_idx_split(data_config.idx_dir, split=data_config.split)
    return ArraySource(images, labels)
  if data_config.source == "photos":
    return ArraySource(photos.photo_patches(split=data_config.split))
  if data_config.source == "tfds":
    return tfds_source(data_config.name, split=data_config.split,
                       data_dir=data_config.data_dir, download=data_config.download)
  raise ValueError(f"config.data.source={data_config.source!r} is not 'tfds', 'idx', "
                   "'photos' or 'words'.")
