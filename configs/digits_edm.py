"""EDM (Karras et al. 2022) on scikit-learn's 8x8 digits (CPU, minutes), with post-hoc EMA.

The digits config's tiny U-Net and training recipe with objective "edm": the preconditioned
denoiser D = c_skip x + c_out F(c_in x, c_noise) of Table 1 with sigma_data = 0.75 (the
standard deviation of the digits' pixels in [-1, 1]), ln(sigma) ~ N(-1.2, 1.2^2) and the
weight lambda(sigma) = 1 / c_out^2; sampling with EDM's Heun sampler on the Karras grid
(sigma in [0.002, 80], rho = 7, 18 levels: 35 evaluations). Besides the fixed-decay EMA it
tracks two power-function EMA profiles (sigma_rel 0.05 and 0.10, Karras et al. 2024) with a
snapshot every 100 steps, from which `python -m jaxdiff.reconstruct_ema` builds any other.
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.diffusion.update(objective="edm", sigma_min=0.002, sigma_max=80.0, sigma_data=0.75,
                          p_mean=-1.2, p_std=1.2)
  config.train.update(posthoc_sigma_rels=(0.05, 0.10), posthoc_every=100)
  config.sample.update(sampler="edm_heun", num_steps=18)
  return config
