"""Metrics of image restoration against references: PSNR, SSIM and the consistency error.

Images are [N, H, W, C] floats in [-1, 1] (the project's convention); PSNR and SSIM are
computed on the [0, 1] scale (data range 1), per image, then averaged.

- PSNR = 10 log10(1 / MSE) (in dB).
- SSIM (Wang et al. 2004, eq. 13) with their Gaussian window (11 x 11, sigma 1.5, valid
  positions only), K1 = 0.01, K2 = 0.03, per channel, averaged over positions and channels.
- The consistency error of super-resolution (Saharia et al. 2021, Sec. 4): the root mean
  square of area_downsample(output) - input, how far an output is from explaining its
  low-resolution input.
- For inpainting and uncropping, the PSNR on the missing pixels only ("hole PSNR"), and
  the classical baseline that fills the hole with the harmonic interpolant of its border
  (the solution of Laplace's equation, Dirichlet at the known pixels, zero normal
  derivative at the image's edge: Bertalmio et al. 2000's simplest member).
"""

from __future__ import annotations

import numpy as np
from scipy import signal, sparse
from scipy.sparse import linalg as sparse_linalg

from jaxdiff import resampling


def _unit(images: np.ndarray) -> np.ndarray:
  return (np.asarray(images, np.float64) + 1.0) / 2.0


def psnr(images: np.ndarray, references: np.ndarray) -> np.ndarray:
  """PSNR in dB [N] of images against references (data range 1 on the [0, 1] scale)."""
  mse = np.mean((_unit(images) - _unit(references)) ** 2, axis=(1, 2, 3))
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-20))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """The normalized 2-D Gaussian window [size, size] of Wang et al. 2004."""
  offsets = np.arange(size) - (size - 1) / 2.0
  g = np.exp(-offsets**2 / (2.0 * sigma**2))
  window = np.outer(g, g)
  return window / window.sum()


def ssim(images: np.ndarray, references: np.ndarray, *, window_size: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
  """Mean SSIM [N] (Wang et al. 2004, eq. 13) over valid window positions and channels;
  ``window_size`` is capped at the image's smaller side."""
  x, y = _unit(images), _unit(references)
  size = min(window_size, x.shape[1], x.shape[2])
  window = gaussian_window(size, sigma)
  c1, c2 = k1**2, k2**2
  scores = np.zeros(x.shape[:1])
  for n in range(x.shape[0]):
    per_channel = []
    for c in range(x.shape[3]):
      a, b = x[n, ..., c], y[n, ..., c]
      blur = lambda v: signal.correlate2d(v, window, mode="valid")
      mu_a, mu_b = blur(a), blur(b)
      var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
      cov = blur(a * b) - mu_a * mu_b
      value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
          (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
      per_channel.append(value.mean())
    scores[n] = np.mean(per_channel)
  return scores


def consistency_error(outputs: np.ndarray, inputs: np.ndarray, factor: int) -> np.ndarray:
  """RMS [N] of area_downsample(outputs, factor) - inputs, on the [-1, 1] scale."""
  low = resampling.area_downsample(np.asarray(outputs, np.float64), factor)
  return np.sqrt(np.mean((low - np.asarray(inputs, np.float64)) ** 2, axis=(1, 2, 3)))


def missing_psnr(images: np.ndarray, references: np.ndarray, known: np.ndarray) -> np.ndarray:
  """PSNR in dB [N] over the missing pixels (``known`` False, bool [N, H, W, 1]) only."""
  missing = np.broadcast_to(~np.asarray(known, bool), np.shape(images))
  squared = np.where(missing, (_unit(images) - _unit(references)) ** 2, 0.0)
  mse = squared.sum(axis=(1, 2, 3)) / np.maximum(missing.sum(axis=(1, 2, 3)), 1)
  return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-20))


def _harmonic_fill_one(image: np.ndarray, known: np.ndarray) -> np.ndarray:
  """One image [H, W, C] with its missing pixels (``known`` [H, W] False) solved exactly
  from the 4-neighbour discrete Laplace equation (sparse LU, every channel at once)."""
  height, width = known.shape
  holes = np.flatnonzero(~known)
  if holes.size == 0 or not known.any():
    return np.where(known[..., None], image, 0.0)
  index = -np.ones(height * width, int)
  index[holes] = np.arange(holes.size)
  rows, cols, vals = [], [], []
  rhs = np.zeros((holes.size, image.shape[-1]))
  flat = image.reshape(height * width, -1)
  for k, p in enumerate(holes):
    i, j = divmod(p, width)
    neighbours = [(i + di) * width + j + dj for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1))
                  if 0 <= i + di < height and 0 <= j + dj < width]
    rows.append(k), cols.append(k), vals.append(float(len(neighbours)))
    for q in neighbours:
      if index[q] >= 0:
        rows.append(k), cols.append(index[q]), vals.append(-1.0)
      else:
        rhs[k] += flat[q]
  system = sparse.csc_matrix((vals, (rows, cols)), shape=(holes.size, holes.size))
  filled = flat.astype(np.float64).copy()
  filled[holes] = sparse_linalg.splu(system).solve(rhs)
  return filled.reshape(image.shape)


def harmonic_fill(images: np.ndarray, known: np.ndarray) -> np.ndarray:
  """[N, H, W, C]: the missing pixels (``known`` False, bool [N, H, W, 1]) replaced by the
  harmonic interpolant of the known ones (each missing pixel the mean of its in-image
  4-neighbours); the known pixels unchanged. An image with no known pixel becomes 0."""
  known = np.asarray(known, bool)[..., 0]
  return np.stack([_harmonic_fill_one(np.asarray(image, np.float64), mask)
                   for image, mask in zip(images, known)])


def summary(outputs: np.ndarray, references: np.ndarray, *, inputs: np.ndarray | None = None,
            factor: int | None = None, known: np.ndarray | None = None) -> dict[str, float]:
  """Mean PSNR and SSIM of outputs against references with their standard errors over the
  images (std / sqrt(N)); with `inputs` and `factor` (area super-resolution) also the mean
  consistency error; with the masks `known` (inpainting, uncropping) the hole PSNR."""
  values = {"psnr": psnr(outputs, references), "ssim": ssim(outputs, references)}
  if inputs is not None and factor is not None:
    values["consistency"] = consistency_error(outputs, inputs, factor)
  if known is not None:
    values["hole_psnr"] = missing_psnr(outputs, references, known)
  result = {}
  for name, per_image in values.items():
    result[name] = float(np.mean(per_image))
    result[f"{name}_stderr"] = float(np.std(per_image) / np.sqrt(len(per_image)))
  return result
