"""Score SDE (Song et al. 2021) on scikit-learn's 8x8 digits: VP-SDE denoising score matching.

The digits config's tiny U-Net and training recipe with objective "sde_dsm": continuous-time
DSM (eq. 7) for the VP SDE with beta in [0.1, 20] (eq. 11), t ~ U(1e-5, 1), lambda(t) =
sigma_t^2. The U-Net predicts the noise at time input t * 999 and score = -output / sigma_t.
Sample grids use DPM-Solver++(2M) (Lu et al. 2022b) with 25 steps; `sample.py --sampler pc`
runs the predictor-corrector sampler over N = 1000 steps.
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.diffusion.update(objective="sde_dsm", sde="vpsde", beta_min=0.1, beta_max=20.0,
                          num_scales=1000, likelihood_weighting=False)
  config.sample.update(sampler="dpm_solver_pp_2m", num_steps=25)
  return config
