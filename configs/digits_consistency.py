"""Consistency training on the digits, no teacher (improved CT, Song & Dhariwal 2024).

The digits U-Net of configs/digits.py as the network F of a consistency model on EDM's sigma
axis [0.002, 80] (`jaxdiff.consistency`): pseudo-Huber loss, lognormal choice of the levels,
N(k) doubling from 11 to 161 levels over the run, the model itself as its target. Samples
with the `fewstep` sampler in one step (`--num_steps 2` or 4 for multistep sampling).
"""

import os

import ml_collections

from jaxdiff.config.schema import load_config_file


def get_config() -> ml_collections.ConfigDict:
  config = load_config_file(os.path.join(os.path.dirname(__file__), "digits.py"))
  config.diffusion.update(objective="consistency_training", sigma_min=0.002, sigma_max=80.0,
                          curriculum="ict", curriculum_steps=3000, ct_s0=10, ct_s1=160)
  config.train.update(num_steps=3000, checkpoint_every=1000)
  config.sample.update(sampler="fewstep", num_steps=1)
  return config
