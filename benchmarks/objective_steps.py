"""Train-step time of several configs, interleaved in one process: the wall-clock budget of
the objectives (e.g. DDPM, flow matching, EDM on the digits) as step counts.

Each config's jitted `jaxdiff.job.step.train_step` (its loss, EMA and post-hoc EMA profiles,
its U-Net) is compiled once; then every round times `--steps` consecutive steps of each
config, the order rotating from round to round, so that the load of a shared machine hits
all alike. Prints the median milliseconds per step of each config and, per round, the ratio
to the first config (median, min, max), and the step count that matches `--budget_steps`
steps of the first config.

    python benchmarks/objective_steps.py configs/digits.py configs/digits_flow.py \\
        configs/digits_edm.py --rounds 9 --steps 50 --budget_steps 1500
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxdiff.config import builders, objectives  # pylint: disable=wrong-import-position
from jaxdiff.config.schema import load_config_file  # pylint: disable=wrong-import-position
from jaxdiff.job import step as training  # pylint: disable=wrong-import-position


def _runner(path: str):
  """A function running n train steps of the config at `path` (compiled on creation)."""
  config = load_config_file(path)
  model, tx = builders.build_model(config), training.build_optimizer(config)
  state = training.init_train_state(
      jax.random.PRNGKey(0), model=model, tx=tx, image_shape=builders.image_shape(config),
      posthoc_profiles=len(config.train.posthoc_sigma_rels))
  step = jax.jit(functools.partial(
      training.train_step, loss_fn=objectives.make_loss_fn(config.diffusion),
      ema_decay=config.train.ema_decay, posthoc_gammas=training.posthoc_gammas(config)),
                 donate_argnums=0)
  shape = (config.train.batch_size,) + builders.image_shape(config)
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), shape, minval=-1.0, maxval=1.0)}
  rng = jax.random.PRNGKey(2)
  holder = [jax.block_until_ready(step(state, batch, rng)[0])]

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      holder[0], metrics = step(holder[0], batch, rng)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start
  return run


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("configs", nargs="+")
  p.add_argument("--rounds", type=int, default=9)
  p.add_argument("--steps", type=int, default=50)
  p.add_argument("--budget_steps", type=int, default=1500)
  args = p.parse_args()
  runners = [_runner(path) for path in args.configs]
  times = np.zeros((args.rounds, len(runners)))
  for r in range(args.rounds):
    for k in range(len(runners)):
      i = (k + r) % len(runners)
      times[r, i] = runners[i](args.steps) / args.steps
  ratios = times / times[:, :1]
  print(f"{jax.devices()[0].platform}, load {os.getloadavg()[0]:.1f}, {args.rounds} rounds of "
        f"{args.steps} steps")
  for i, path in enumerate(args.configs):
    median = float(np.median(ratios[:, i]))
    print(f"{path}: {1e3 * np.median(times[:, i]):.1f} ms/step, ratio {median:.3f} "
          f"[{ratios[:, i].min():.3f}, {ratios[:, i].max():.3f}], "
          f"{int(round(args.budget_steps / median))} steps")


if __name__ == "__main__":
  main()
