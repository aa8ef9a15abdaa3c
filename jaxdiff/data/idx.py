"""Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzipped.

Format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code
(0x08 = uint8), the number of dimensions n, then n big-endian uint32 sizes and the data.
"""

import gzip
import os

import numpy as np

_UINT8 = 0x08
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one uint8 IDX file (optionally .gz) into an array of the stored shape."""
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4]!r}).")
  if data[2] != _UINT8:
    raise ValueError(f"{path}: IDX type code {data[2]:#04x} is not uint8 (0x08).")
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(s) for s in np.frombuffer(data[4:header], dtype=">u4"))
  if len(data) - header != int(np.prod(shape)):
    raise ValueError(
        f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes), "
        f"file holds {len(data) - header} data bytes (truncated or corrupt).")
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: str, stem: str) -> str:
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  raise FileNotFoundError(f"Neither {stem} nor {stem}.gz found in IDX folder {directory!r}.")


def load_idx_split(directory: str, *, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads (images uint8 [N, H, W, 1], labels int32 [N]) of an MNIST-style split.

  Files are `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` as distributed (e.g. by
  Debian's dataset-fashion-mnist under /usr/share/datasets/fashion-mnist).
  """
  if split not in _SPLIT_PREFIX:
    raise ValueError(f"IDX split {split!r} is not one of {tuple(_SPLIT_PREFIX)}.")
  prefix = _SPLIT_PREFIX[split]
  images = read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"))
  labels = read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"))
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(
        f"IDX split {split!r} in {directory!r}: images {images.shape} and labels "
        f"{labels.shape} do not match ([N, H, W] and [N]).")
  return images[..., None], labels.astype(np.int32)
