"""Inception Score (Salimans et al., 2016): exp(E_x KL(p(y|x) || p(y))).

p(y|x) is the softmax of the FID Inception's 1008 logits and p(y) its mean over the
images of a split; as in the original code, the images are cut into `num_splits` equal
parts and the mean and standard deviation of the per-split scores are reported.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def inception_score(logits: np.ndarray, *, num_splits: int = 10) -> tuple[float, float]:
  """(mean, std) over splits of exp(mean_x KL(p(y|x) || p(y))) from logits [N, K], float64."""
  logits = np.asarray(logits, dtype=np.float64)
  if logits.ndim != 2 or not np.isfinite(logits).all():
    raise ValueError(f"inception_score: expected finite logits [N, K], got shape "
                     f"{logits.shape}")
  if not 1 <= num_splits <= len(logits):
    raise ValueError(f"inception_score: num_splits must be in [1, N={len(logits)}], got "
                     f"{num_splits}")
  log_p = logits - logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, num_splits):
    log_marginal = logsumexp(part, axis=0) - np.log(len(part))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))
