"""uint8 conversion, grids and PNG/.npz files (jaxdiff.images)."""

import numpy as np
import pytest
from PIL import Image

from jaxdiff import images


def test_uint8_round_trip_is_exact_and_rounds():
  levels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  floats = images.from_uint8(levels)
  assert floats.dtype == np.float32 and floats.min() == -1.0 and floats.max() == 1.0
  np.testing.assert_array_equal(images.to_uint8(floats), levels)
  # Nearest level, clipped outside [-1, 1]: (x + 1) * 127.5 = 0.4 -> 0, 0.6 -> 1, 255.6 -> 255.
  np.testing.assert_array_equal(
      images.to_uint8(np.array([0.4, 0.6, 255.6, -5.0]) / 127.5 - 1.0), [0, 1, 255, 0])
  with pytest.raises(ValueError, match="NaN"):
    images.to_uint8(np.array([np.nan]))


def test_grid_layout_and_png(tmp_path):
  tiles = np.stack([np.full((3, 4, 1), 10 * (i + 1), np.uint8) for i in range(5)])
  grid = images.make_grid(tiles, padding=1)  # 5 images -> 2 rows x 3 columns
  assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 1)
  # Image i sits at row i // 3, column i % 3; padding and the empty 6th cell stay 255.
  for i in range(5):
    top, left = 1 + (i // 3) * 4, 1 + (i % 3) * 5
    assert (grid[top:top + 3, left:left + 4] == 10 * (i + 1)).all()
  assert (grid[5:8, 11:15] == 255).all() and (grid[0] == 255).all()
  assert images.make_grid(tiles, rows=5, padding=0).shape == (15, 4, 1)
  path = tmp_path / "sub" / "grid.png"
  images.save_grid(str(path), tiles, padding=1)  # 9 x 16 pixels, enlarged 29 x (>= 256)
  saved = np.asarray(Image.open(path))[..., None]
  np.testing.assert_array_equal(saved, np.repeat(np.repeat(grid, 29, axis=0), 29, axis=1))
  images.save_grid(str(path), tiles, padding=1, min_side=1)
  np.testing.assert_array_equal(np.asarray(Image.open(path))[..., None], grid)
  np.testing.assert_array_equal(images.load_png(str(path), channels=1), grid)


def test_npz_and_bad_input(tmp_path):
  tiles = np.zeros((2, 4, 4, 3), np.uint8)
  images.save_npz(str(tmp_path / "s.npz"), tiles, labels=np.array([3, 1]))
  with np.load(tmp_path / "s.npz") as data:
    np.testing.assert_array_equal(data["labels"], [3, 1])
    assert data["images"].dtype == np.uint8 and data["images"].shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
    images.save_npz(str(tmp_path / "t.npz"), tiles, labels=np.zeros(3))
  with pytest.raises(ValueError, match=r"expected uint8 images \[N, H, W, C\]"):
    images.make_grid(tiles.astype(np.float32))
  with pytest.raises(ValueError, match=r"rows must be in \[1, 2\]"):
    images.make_grid(tiles, rows=3)
  with pytest.raises(FileNotFoundError, match="no image file"):
    images.load_png(str(tmp_path / "missing.png"), channels=3)
