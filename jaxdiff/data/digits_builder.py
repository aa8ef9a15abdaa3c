"""A TFDS builder for scikit-learn's handwritten digits (offline, no TensorFlow).

The 1797 8x8 images of `sklearn.datasets.load_digits` (UCI optical recognition of
handwritten digits, 17 gray levels 0..16) ship inside scikit-learn, so preparing this
dataset needs no network. Gray levels are mapped to uint8 as round(v * 255 / 16) and stored
as PNG bytes (encoded with Pillow), so `download_and_prepare` runs without TensorFlow when
the builder uses `file_format="array_record"`.

Splits: "train" holds scikit-learn's first 1500 examples and "test" the last 297, a fixed
held-out subset so that bits/dim and sample-quality metrics are measured out of sample.
"""

import io

import numpy as np
from etils import epath
import tensorflow_datasets as tfds
from PIL import Image

_GRAY_LEVELS = 16
NUM_TRAIN = 1500  # Examples [0, 1500) are "train", [1500, 1797) are "test".


def _png_bytes(image: np.ndarray) -> bytes:
  """Encodes an [H, W] uint8 array as PNG bytes with Pillow."""
  buffer = io.BytesIO()
  Image.fromarray(image, mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits as a TFDS dataset named `sklearn_digits`."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "A held-out 'test' split: the last 297 examples."}
  # TFDS otherwise infers these two paths through `importlib_resources` from the top-level
  # package, which needs a package that is not installed here; this module's folder holds
  # no metadata or checksum files, which TFDS accepts.
  code_path = epath.Path(__file__)
  pkg_dir_path = epath.Path(__file__).parent

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn's handwritten digits (8x8, 17 gray levels).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Records keep scikit-learn's order; training shuffles.
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    return {"train": self._generate_examples(0, NUM_TRAIN),
            "test": self._generate_examples(NUM_TRAIN, None)}

  def _generate_examples(self, start: int, stop: int | None):
    """scikit-learn's examples [start, stop), keyed by their index there."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = np.round(digits.images * (255.0 / _GRAY_LEVELS)).astype(np.uint8)
    for index in range(len(images))[start:stop]:
      yield index, {"image": _png_bytes(images[index]), "label": int(digits.target[index])}
