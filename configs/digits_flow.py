"""Flow matching on scikit-learn's 8x8 digits (CPU, minutes).

The digits config's tiny U-Net and training recipe with objective "flow": conditional flow
matching (Lipman et al. 2023) on the linear interpolant x_t = (1 - t) x_0 + t eps of
rectified flow (Liu et al. 2023), t drawn from the logit-normal distribution sigmoid(N(0, 1))
(Esser et al. 2024, eq. 19); the U-Net predicts the velocity eps - x_0 at time input t * 999.
Every sampler runs on it (`sample.py --sampler NAME`); the default grid of a flow is uniform in
t. The steps match configs/digits.py's wall-clock budget (README, "Flow matching and EDM").
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.diffusion.update(objective="flow", interpolant="linear",
                          time_distribution="logit_normal", logit_mean=0.0, logit_std=1.0)
  config.sample.update(sampler="heun", num_steps=10)
  return config
