"""Image conversion and PNG/.npz writing: uint8 <-> [-1, 1] floats, sample grids.

Images follow the project convention: NHWC, float in [-1, 1]. The uint8 mapping is the
inverse of the data scaling `x / 127.5 - 1` used by Ho et al. (2020), so a round trip
through `to_uint8(from_uint8(u))` is exact.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps floats in [-1, 1] to uint8 levels: `clip(round((x + 1) * 127.5), 0, 255)`.

  Values outside [-1, 1] are clipped; NaNs raise, since they mean a broken sampler.
  """
  images = np.asarray(images, dtype=np.float64)
  if np.isnan(images).any():
    raise ValueError("to_uint8: images contain NaN; expected floats in [-1, 1]")
  return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
  """Maps uint8 levels to float32 in [-1, 1]: `x / 127.5 - 1` (Ho et al., 2020)."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"from_uint8: expected a uint8 array, got dtype {images.dtype}")
  return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def grid_shape(num_images: int) -> tuple[int, int]:
  """(rows, columns) of the most nearly square grid holding `num_images` images."""
  if num_images < 1:
    raise ValueError(f"grid_shape: num_images must be >= 1, got {num_images}")
  cols = math.ceil(math.sqrt(num_images))
  return math.ceil(num_images / cols), cols


def make_grid(images: np.ndarray, *, rows: Optional[int] = None, padding: int = 2,
              pad_value: int = 255) -> np.ndarray:
  """Tiles uint8 images [N, H, W, C] row-major into one [rows*(H+p)+p, cols*(W+p)+p, C] image.

  `rows` defaults to the most nearly square layout; unused cells keep `pad_value`.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"make_grid: expected uint8 images [N, H, W, C], got dtype "
                     f"{images.dtype} and shape {images.shape}")
  n, h, w, c = images.shape
  if rows is None:
    rows, cols = grid_shape(n)
  else:
    if rows < 1 or rows > n:
      raise ValueError(f"make_grid: rows must be in [1, {n}], got {rows}")
    cols = math.ceil(n / rows)
  if padding < 0:
    raise ValueError(f"make_grid: padding must be >= 0, got {padding}")
  grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                 pad_value, dtype=np.uint8)
  for i in range(n):
    top = padding + (i // cols) * (h + padding)
    left = padding + (i % cols) * (w + padding)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """Writes one uint8 image [H, W, C] with C in {1, 3, 4} as a PNG file."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
    raise ValueError(f"save_png: expected a uint8 image [H, W, 1|3|4], got dtype "
                     f"{image.dtype} and shape {image.shape}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def upscale(image: np.ndarray, *, min_side: int) -> np.ndarray:
  """A [H, W, C] image enlarged by the smallest integer factor k (nearest neighbour) that
  makes both sides at least ``min_side`` pixels; unchanged when they already are."""
  k = max(1, math.ceil(min_side / min(image.shape[:2])))
  return image if k == 1 else np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def save_grid(path: str, images: np.ndarray, *, rows: Optional[int] = None,
              padding: int = 2, min_side: int = 256) -> np.ndarray:
  """Writes uint8 images [N, H, W, C] as one PNG grid (see `make_grid`), enlarged to at least
  ``min_side`` pixels a side (`upscale`, so that 8x8 digits are visible); returns the grid."""
  grid = upscale(make_grid(images, rows=rows, padding=padding), min_side=min_side)
  save_png(path, grid)
  return grid


def side_by_side(columns: list[np.ndarray], *, padding: int = 2,
                 pad_value: int = 255) -> np.ndarray:
  """uint8 [N, H, k * (W + p) - p, C]: sample i's images of the k ``columns`` ([N, h_j, w_j,
  C_j] uint8, e.g. input | output | reference) in one row, each enlarged (nearest
  neighbour) by an integer factor to the largest size, gray repeated to the widest
  channels."""
  height = max(column.shape[1] for column in columns)
  width = max(column.shape[2] for column in columns)
  channels = max(column.shape[3] for column in columns)
  parts = []
  for j, column in enumerate(columns):
    ky, kx = height // column.shape[1], width // column.shape[2]
    if ky * column.shape[1] != height or kx * column.shape[2] != width:
      raise ValueError(f"side_by_side: column {j} of size {column.shape[1:3]} does not divide "
                       f"the largest size {(height, width)}")
    big = np.repeat(np.repeat(column, ky, axis=1), kx, axis=2)
    parts.append(np.broadcast_to(big, big.shape[:3] + (channels,)))
    if j + 1 < len(columns):
      parts.append(np.full((column.shape[0], height, padding, channels), pad_value, np.uint8))
  return np.concatenate(parts, axis=2)


def load_png(path: str, *, channels: int) -> np.ndarray:
  """Reads a PNG (or any PIL-readable image) as uint8 [H, W, channels], channels in {1, 3}."""
  if channels not in (1, 3):
    raise ValueError(f"load_png: channels must be 1 or 3, got {channels}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"load_png: no image file at {path!r}")
  with Image.open(path) as img:
    array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
  return array[..., None] if channels == 1 else array


def save_npz(path: str, images: np.ndarray, *, labels: Optional[np.ndarray] = None,
             extra: Optional[dict[str, np.ndarray]] = None) -> None:
  """Writes uint8 images [N, H, W, C] (key "images"), optional labels [N] and ``extra``
  arrays (e.g. an image-to-image run's "inputs" and "references") to an .npz."""
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"save_npz: expected uint8 images [N, H, W, C], got dtype "
                     f"{images.dtype} and shape {images.shape}")
  arrays = {"images": images}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != images.shape[:1]:
      raise ValueError(f"save_npz: labels must have shape {images.shape[:1]}, got "
                       f"{labels.shape}")
    arrays["labels"] = labels
  arrays.update(extra or {})
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  np.savez(path, **arrays)
