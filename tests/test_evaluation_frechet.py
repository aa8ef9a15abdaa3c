"""Frechet distance and Inception Score against closed forms and SciPy float64 derivations."""

import numpy as np
import pytest
import scipy.linalg
from scipy.special import softmax
from scipy.stats import entropy

from jaxdiff.evaluation import frechet
from jaxdiff.evaluation.inception_score import inception_score


def _random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
  q, r = np.linalg.qr(rng.standard_normal((d, d)))
  return q * np.sign(np.diag(r))


def test_frechet_two_gaussians_closed_form():
  # Co-diagonalizable covariances S_i = Q diag(a_i) Q^T: (S1 S2)^{1/2} = Q diag(sqrt(a1 a2)) Q^T,
  # so d^2 = ||mu1 - mu2||^2 + sum_k (sqrt(a1_k) - sqrt(a2_k))^2 exactly.
  rng = np.random.default_rng(0)
  d = 16
  q = _random_orthogonal(rng, d)
  a1, a2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a1) - np.sqrt(a2)) ** 2)
  got = frechet.frechet_distance(mu1, q @ np.diag(a1) @ q.T, mu2, q @ np.diag(a2) @ q.T)
  # float64 eigendecompositions of well-conditioned 16x16 matrices: ~1e-13 relative error.
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_one_dimensional():
  # d^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
  got = frechet.frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]),
                                 np.array([[0.25]]))
  np.testing.assert_allclose(got, 2.0 ** 2 + (2.0 - 0.5) ** 2, rtol=1e-12)


def test_frechet_matches_scipy_sqrtm_for_general_covariances():
  # Non-commuting covariances: compare with the textbook formula via scipy.linalg.sqrtm.
  rng = np.random.default_rng(1)
  d = 12
  x1, x2 = rng.standard_normal((3 * d, d)), rng.standard_normal((3 * d, d)) @ rng.standard_normal((d, d))
  s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
  mu1, mu2 = x1.mean(0), x2.mean(0)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2))))
  # sqrtm of a non-symmetric product is accurate to ~1e-10 relative here.
  np.testing.assert_allclose(frechet.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)


def test_frechet_zero_for_identical_statistics_even_when_singular():
  rng = np.random.default_rng(2)
  features = rng.standard_normal((20, 50))  # fewer samples than dimensions: rank 19
  stats = frechet.feature_statistics(features)
  assert np.linalg.matrix_rank(stats.sigma) == 19
  d = frechet.frechet_distance_from_stats(stats, stats)
  # tr(S) ~ 50; the cancellation leaves round-off of order 1e-12 * tr(S).
  assert 0.0 <= d < 1e-9


def test_feature_statistics_are_mean_and_unbiased_covariance():
  rng = np.random.default_rng(3)
  features = rng.standard_normal((40, 5)).astype(np.float32)
  stats = frechet.feature_statistics(features)
  f64 = features.astype(np.float64)
  centred = f64 - f64.mean(0)
  np.testing.assert_allclose(stats.mu, f64.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, centred.T @ centred / 39, rtol=1e-12)
  assert stats.sigma.dtype == np.float64 and stats.count == 40


def test_statistics_cache_round_trip_and_reuse(tmp_path):
  path = str(tmp_path / "stats" / "ref.npz")
  rng = np.random.default_rng(4)
  calls = []

  def compute():
    calls.append(1)
    return rng.standard_normal((30, 4))

  first = frechet.cached_statistics(path, compute)
  second = frechet.cached_statistics(path, compute)
  assert len(calls) == 1
  np.testing.assert_array_equal(first.mu, second.mu)
  np.testing.assert_array_equal(first.sigma, second.sigma)
  assert second.count == 30


def test_frechet_rejects_bad_input():
  with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(ValueError, match="means must be vectors"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
  with pytest.raises(ValueError, match="NaN"):
    frechet.feature_statistics(np.full((3, 2), np.nan))
  with pytest.raises(FileNotFoundError, match="no statistics file"):
    frechet.load_statistics("/nonexistent/stats.npz")


def test_inception_score_closed_forms():
  k = 7
  # Confident, evenly spread predictions over k classes: IS = k.
  peaked = 60.0 * np.eye(k)[np.arange(70) % k]
  mean, std = inception_score(peaked, num_splits=1)
  np.testing.assert_allclose(mean, k, rtol=1e-9)
  # Identical predictions for every image: p(y|x) = p(y), IS = 1.
  same = np.tile(np.random.default_rng(5).standard_normal(k), (50, 1))
  np.testing.assert_allclose(inception_score(same, num_splits=5)[0], 1.0, rtol=1e-12)


def test_inception_score_matches_scipy_entropy():
  rng = np.random.default_rng(6)
  logits = 3.0 * rng.standard_normal((60, 11))
  probs = softmax(logits, axis=1)
  expected = [np.exp(np.mean([entropy(p, part.mean(0)) for p in part]))
              for part in np.array_split(probs, 3)]
  mean, std = inception_score(logits, num_splits=3)
  np.testing.assert_allclose(mean, np.mean(expected), rtol=1e-10)
  np.testing.assert_allclose(std, np.std(expected), rtol=1e-8)
