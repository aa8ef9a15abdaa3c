"""Wall-clock sampling time of trained runs, side by side: seconds per image through the one
generation path (`jaxdiff.job.generation.sample_batches`: the sampler, guidance, and for a
latent run the decoder), after a first call that compiles.

    python benchmarks/sampling_time.py --workdir runs/fashion_latent --workdir runs/pixel16 \\
        --num_samples 256 --num_steps 50 --guidance_scale 3

For each workdir it prints the parameter count of the denoiser, the median over `--repeats`
timed calls, and seconds per image. Caption models are asked for the class names in turn.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from jaxdiff import parallel
from jaxdiff.config import builders
from jaxdiff.job import cli, generation, latents


def time_run(workdir: str, *, num_samples: int, num_steps: int, guidance_scale: float,
             repeats: int) -> dict:
  """Median seconds of `repeats` calls drawing `num_samples` images of the run's EMA model."""
  mesh = parallel.make_mesh()
  config, restored = cli.load_run(workdir, step=None, mesh=mesh)
  latents.resolve_config(config)
  model = builders.build_model(config)
  params = restored.state.ema_params
  tokens = generation.class_captions(config, num_samples)
  labels = None if tokens is not None else generation.cycled_labels(
      config.model.get("num_classes"), num_samples)
  request = generation.request_from_config(
      config, num_samples=num_samples, batch_size=num_samples, num_steps=num_steps,
      guidance_scale=guidance_scale, tokens=tokens, labels=labels)
  key = jax.random.PRNGKey(0)
  generation.sample_batches(config, model, params, key, request, mesh=mesh)  # Compiles.
  seconds = []
  for repeat in range(repeats):
    start = time.perf_counter()
    np.asarray(generation.sample_batches(config, model, params,
                                         jax.random.fold_in(key, repeat + 1), request,
                                         mesh=mesh))
    seconds.append(time.perf_counter() - start)
  count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree_util.tree_leaves(params))
  median = float(np.median(seconds))
  return dict(workdir=workdir, parameters=count, latent=builders.is_latent(config),
              seconds=median, seconds_per_image=median / num_samples,
              num_samples=num_samples, num_steps=num_steps, sampler=config.sample.sampler,
              guidance_scale=guidance_scale)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--num_samples", type=int, default=256)
  parser.add_argument("--num_steps", type=int, default=50)
  parser.add_argument("--guidance_scale", type=float, default=1.0)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  for workdir in args.workdir:
    print(json.dumps(time_run(workdir, num_samples=args.num_samples, num_steps=args.num_steps,
                              guidance_scale=args.guidance_scale, repeats=args.repeats)))


if __name__ == "__main__":
  main()
