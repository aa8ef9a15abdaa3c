"""NCSN (Song & Ermon 2019) on scikit-learn's 8x8 digits: a noise-conditional score network.

The digits config's tiny U-Net and training recipe with objective "ncsn": denoising score
matching over a geometric ladder of L = 24 noise levels, lambda(sigma) = sigma^2 (eq. 5-6),
the U-Net taking the level's index as its timestep and score = output / sigma. The ladder
follows Song & Ermon 2020 ("Improved Techniques"): sigma_max = 10, about the largest pairwise
distance between training images in [-1, 1] pixel space (9.6; technique 1), and a ratio
sigma_i / sigma_{i-1} = 1.35 that keeps consecutive levels' shells overlapping in D = 64
dimensions (technique 2: 22 levels from 10 down to sigma_min = 0.01). Sampling is annealed
Langevin dynamics (Algorithm 1) with 50 steps per level, epsilon = 2e-5 sigma_i^2 /
sigma_L^2 (the paper's step_lr for sigma_L = 0.01) and a final denoising step.
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.diffusion.update(objective="ncsn", sigma_min=0.01, sigma_max=10.0, num_scales=24)
  config.sample.update(sampler="ald", num_steps=50, ald_step_lr=2e-5)
  return config
