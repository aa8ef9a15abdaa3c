"""Frechet distance between Gaussians fitted to features (FID; Heusel et al., 2017).

    d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})      (Dowson & Landau, 1982)

computed in float64. The cross term uses tr((S1 S2)^{1/2}) = tr((A S2 A)^{1/2}) with
A = S1^{1/2}: S1 S2 = A (A S2 A) A^{-1} is similar to the symmetric PSD matrix A S2 A, so
its square root's trace is the sum of square roots of the eigenvalues of A S2 A. Both steps
are symmetric eigendecompositions, so no complex parts appear and singular covariances
(fewer samples than features) need no diagonal offset.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Callable

import numpy as np

from jaxdiff.evaluation import cache


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
  """Mean [D], covariance [D, D] (float64) and number of samples of a feature set."""
  mu: np.ndarray
  sigma: np.ndarray
  count: int


def feature_statistics(features: np.ndarray) -> FeatureStatistics:
  """Sample mean and unbiased covariance (ddof=1, as TTUR/pytorch-fid) of features [N, D]."""
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"feature_statistics: expected features [N >= 2, D], got shape "
                     f"{features.shape}")
  if not np.isfinite(features).all():
    raise ValueError("feature_statistics: features contain NaN or inf")
  return FeatureStatistics(mu=features.mean(axis=0),
                           sigma=np.atleast_2d(np.cov(features, rowvar=False)),
                           count=features.shape[0])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues -> 0."""
  eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

  The quantity reported as FID (Heusel et al., 2017); see the module docstring for the
  stable float64 evaluation of the trace term.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"frechet_distance: means must be vectors of one shape, got "
                     f"{mu1.shape} and {mu2.shape}")
  d = mu1.shape[0]
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    if sigma.shape != (d, d):
      raise ValueError(f"frechet_distance: {name} must have shape {(d, d)}, got "
                       f"{sigma.shape}")
    if not np.isfinite(sigma).all():
      raise ValueError(f"frechet_distance: {name} contains NaN or inf")
  root1 = _psd_sqrt(sigma1)
  cross = root1 @ sigma2 @ root1
  cross_eigvals = np.linalg.eigvalsh((cross + cross.T) / 2)
  trace_sqrt = np.sqrt(np.clip(cross_eigvals, 0.0, None)).sum()
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(distance, 0.0))


def frechet_distance_from_stats(stats1: FeatureStatistics, stats2: FeatureStatistics) -> float:
  """`frechet_distance` of two `FeatureStatistics`."""
  return frechet_distance(stats1.mu, stats1.sigma, stats2.mu, stats2.sigma)


def save_statistics(path: str, stats: FeatureStatistics) -> None:
  """Writes statistics to an .npz with keys mu, sigma (as TTUR's stats files) and count.

  Atomic: written to a temporary file in the same folder, then renamed over `path`, so a
  crash or a full disk never leaves a truncated file there.
  """
  cache.write_atomically(path, lambda f: np.savez(f, mu=stats.mu, sigma=stats.sigma,
                                                   count=np.int64(stats.count)))


def load_statistics(path: str) -> FeatureStatistics:
  """Reads statistics written by `save_statistics` (or a TTUR/pytorch-fid mu/sigma .npz).

  Raises FileNotFoundError for a missing file and ValueError, naming the file, for one
  that is not such an .npz (e.g. truncated).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"load_statistics: no statistics file at {path!r}")
  try:
    with np.load(path, allow_pickle=False) as data:
      missing = {"mu", "sigma"} - set(data.files)
      if missing:
        raise ValueError(f"lacks keys {sorted(missing)}; expected mu and sigma")
      count = int(data["count"]) if "count" in data.files else 0
      return FeatureStatistics(mu=data["mu"].astype(np.float64),
                               sigma=data["sigma"].astype(np.float64), count=count)
  except Exception as e:  # pylint: disable=broad-except  (zipfile, numpy: many types)
    raise ValueError(f"load_statistics: {path!r} is not a statistics .npz "
                     f"({type(e).__name__}: {e})") from None


def cached_statistics(path: str, compute: Callable[[], np.ndarray]) -> FeatureStatistics:
  """Loads statistics from `path`, or computes features with `compute()` and caches them.

  Used for dataset reference statistics, which are the same for every run. A damaged
  cache file is reported with a warning naming it, and recomputed.
  """
  if os.path.isfile(path):
    try:
      return load_statistics(path)
    except ValueError as e:
      logging.warning("Damaged statistics cache %s (%s); recomputing it.", path, e)
  stats = feature_statistics(compute())
  save_statistics(path, stats)
  return stats
