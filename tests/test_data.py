"""Tests for jaxdiff.data: the digits TFDS builder, IDX files, the deterministic pipeline."""

import gzip
import os

import chex
import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdiff import data, parallel
from jaxdiff.config import schema

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def digits_sources(tmp_path_factory):
  """The sklearn_digits TFDS splits {"train", "test"}, prepared offline into a fresh data_dir."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  return {split: data.tfds_source("sklearn_digits", split=split, data_dir=data_dir)
          for split in ("train", "test")}


def _toy_source(n=10, size=4, channels=1):
  images = np.arange(n * size * size * channels, dtype=np.int64).reshape(
      n, size, size, channels) % 256
  return data.ArraySource(images.astype(np.uint8), np.arange(n, dtype=np.int32) % 7)


def test_digits_builder_matches_sklearn_with_a_held_out_test_split(digits_sources):
  digits = load_digits()
  train, test = digits_sources["train"], digits_sources["test"]
  assert (len(train), len(test)) == (1500, 297) and len(digits.images) == 1797
  for source, indices, offset in ((train, [0, 5, 1499], 0), (test, [0, 7, 296], 1500)):
    images, labels = source.read(indices)
    wanted = [i + offset for i in indices]
    expected = np.round(digits.images[wanted] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.stack(images)[..., 0], expected)  # PNG is lossless.
    np.testing.assert_array_equal(labels, digits.target[wanted])
    assert labels.dtype == np.int32
  assert data.SklearnDigits.VERSION > "1.0.0"  # Copies prepared without "test" are rebuilt.


def test_tfds_unknown_name_is_clear_error(tmp_path):
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    data.tfds_source("no_such_dataset_xyz", split="train", data_dir=str(tmp_path))


def test_global_batch_indices_visit_each_example_once_per_epoch():
  n, batch = 10, 4
  positions = np.concatenate([
      data.global_batch_indices(num_examples=n, batch_size=batch, step=s, seed=3)
      for s in range(5)])  # 20 positions = epochs 0 and 1 exactly.
  assert sorted(positions[:n]) == list(range(n))
  assert sorted(positions[n:]) == list(range(n))
  assert not np.array_equal(positions[:n], positions[n:])  # Fresh order per epoch.
  again = data.global_batch_indices(num_examples=n, batch_size=batch, step=3, seed=3)
  np.testing.assert_array_equal(again, positions[12:16])  # Depends on (seed, step) only.
  other_seed = data.global_batch_indices(num_examples=n, batch_size=batch, step=3, seed=4)
  assert not np.array_equal(other_seed, again)


def test_host_batch_rows_partition_the_global_batch():
  source = _toy_source()
  options = dict(step=7, seed=1, batch_size=6, image_size=4, channels=1, random_flip=True)
  full = data.host_batch(source, rows=slice(0, 6), **options)
  parts = [data.host_batch(source, rows=slice(a, b), **options) for a, b in ((0, 2), (2, 6))]
  for key in ("image", "label"):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])
  chex.assert_shape(full["image"], (6, 4, 4, 1))
  chex.assert_type(full["image"], np.float32)


def test_host_batch_scaling_and_flips_are_exact():
  source = _toy_source()
  options = dict(step=2, seed=0, batch_size=8, rows=slice(0, 8), image_size=4, channels=1)
  plain = data.host_batch(source, random_flip=False, **options)
  flipped = data.host_batch(source, random_flip=True, **options)
  indices = data.global_batch_indices(num_examples=10, batch_size=8, step=2, seed=0)
  np.testing.assert_array_equal(plain["image"],
                                source.images[indices].astype(np.float32) / 127.5 - 1.0)
  mask = data.flip_mask(batch_size=8, step=2, seed=0)
  assert 0 < mask.sum() < 8  # This (seed, step) flips some but not all examples.
  np.testing.assert_array_equal(flipped["image"][mask], plain["image"][mask][:, :, ::-1])
  np.testing.assert_array_equal(flipped["image"][~mask], plain["image"][~mask])


def test_host_batch_rejects_wrong_channel_count():
  with pytest.raises(ValueError, match="config.data.channels=3"):
    data.host_batch(_toy_source(), step=0, seed=0, batch_size=2, rows=slice(0, 2),
                    image_size=4, channels=3, random_flip=False)


def test_center_crop_resize():
  image = np.zeros((6, 4, 3), np.uint8)
  image[1:5] = 200  # The central 4x4 square.
  np.testing.assert_array_equal(data.center_crop_resize(image, size=4),
                                np.full((4, 4, 3), 200, np.uint8))
  resized = data.center_crop_resize(np.full((8, 8, 1), 77, np.uint8), size=4)
  # A constant image stays constant under bicubic resampling.
  np.testing.assert_array_equal(resized, np.full((4, 4, 1), 77, np.uint8))


def _write_idx(path, array, *, compress=False):
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  opener = gzip.open if compress else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_split_loading(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 3, 2), dtype=np.uint8)
  labels = np.array([1, 0, 9, 3, 3], np.uint8)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
  loaded_images, loaded_labels = data.load_idx_split(str(tmp_path), split="test")
  np.testing.assert_array_equal(loaded_images, images[..., None])
  np.testing.assert_array_equal(loaded_labels, labels)
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data.load_idx_split(str(tmp_path), split="train")


def test_idx_corrupt_files_are_reported(tmp_path):
  truncated = tmp_path / "truncated"
  _write_idx(truncated, np.zeros((4, 3), np.uint8))
  truncated.write_bytes(truncated.read_bytes()[:-1])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    data.read_idx(truncated)
  not_idx = tmp_path / "not_idx"
  not_idx.write_bytes(b"\x89PNG....")
  with pytest.raises(ValueError, match="not an IDX file"):
    data.read_idx(not_idx)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_idx_files():
  config = schema.base_config()
  config.data.update(source="idx", idx_dir=FASHION_MNIST_DIR, split="test")
  source = data.make_source(config.data)
  images, labels = source.read([0, 1])
  assert len(source) == 10_000
  assert images[0].shape == (28, 28, 1)
  np.testing.assert_array_equal(labels, [9, 2])  # Ankle boot, pullover (published order).


def test_device_batches_match_host_batches_in_order():
  source = _toy_source(n=13)
  config = schema.base_config()
  config.data.update(image_size=4, channels=1, random_flip=True, prefetch=2)
  sharding = parallel.batch_sharding(parallel.make_mesh())
  batches = list(data.device_batches(source, config.data, seed=5, batch_size=4, start_step=3,
                                     num_steps=9, sharding=sharding))
  assert len(batches) == 6
  for step, batch in zip(range(3, 9), batches):
    expected = data.host_batch(source, step=step, seed=5, batch_size=4, rows=slice(0, 4),
                               image_size=4, channels=1, random_flip=True)
    assert isinstance(batch["image"], jax.Array) and batch["image"].sharding == sharding
    np.testing.assert_array_equal(np.asarray(batch["image"]), expected["image"])
    np.testing.assert_array_equal(np.asarray(batch["label"]), expected["label"])
