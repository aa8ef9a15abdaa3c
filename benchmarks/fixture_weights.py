"""Random weights that a parity fixture names by (seed, tensor names and shapes) instead of
storing them: drawn identically by benchmarks/make_pretrained_fixtures.py (PyTorch peer
environment) and by tests/test_pretrained.py (jaxdiff's, no torch). NumPy only."""

import math

import numpy as np


def draw_weights(seed: int, shapes: list[tuple[str, list[int]]]) -> dict[str, np.ndarray]:
  """float32 tensors in the order given: biases 0.1 N, other 1-D tensors (norm scales)
  1 + 0.1 N, the rest unit-gain N / sqrt(fan_in)."""
  rng = np.random.default_rng(seed)
  weights = {}
  for name, shape in shapes:
    noise = rng.standard_normal(shape)
    if name.endswith("bias"):
      value = 0.1 * noise
    elif len(shape) == 1:
      value = 1.0 + 0.1 * noise
    else:
      value = noise / math.sqrt(math.prod(shape[1:]))
    weights[name] = value.astype(np.float32)
  return weights
