"""Samples a trained model: `python sample.py --workdir DIR [--sampler NAME] [options]`.

Samples the newest (or --step) checkpoint of DIR with its EMA parameters (--no-ema: the raw
ones) through the one generation path (`jaxdiff.job.generation.sample_batches`, also used by
evaluation and the trainer: the same --seed and --batch_size give the same images) and
writes a PNG grid (the words, a .txt, for a word-list run) and an .npz of uint8 images
("images", and "labels" for a conditional model) into DIR or --out. Unset options default to
the run's config.sample. Samplers (`jaxdiff.config.sampling.SAMPLERS`) run on any Gaussian
run (a discrete one samples with "d3pm" or "unmask"); --image with --mask inpaints (RePaint
with --resample_count > 1), --image alone edits (SDEdit, --strength); ald's --num_steps
counts Langevin steps per noise level. --pretrained DIR samples an imported diffusers
UNet2DModel folder (with its scheduler config) instead of a run. An image-to-image run
(config.data.task) is conditioned on --condition (an image or .npz), else on the test
split's degraded images, and also writes its inputs and references beside the outputs;
--cascade DIR... adds super-resolution stages after --workdir; --reference with
--ilvr_factor guides an unconditional run by ILVR. A caption model samples --prompt
captions (default: its class names); a latent run's samples are decoded by its
autoencoder. Examples:
    python sample.py --workdir runs/digits --sampler dpm_solver_pp_2m --num_steps 20
    python sample.py --workdir runs/fashion_latent --prompt "dark sneaker" --guidance_scale 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import jax
import tqdm
from absl import logging as absl_logging

from jaxdiff import parallel
from jaxdiff.config import sampling
from jaxdiff.job import cli, generation, runtime

SAMPLERS = sampling.SAMPLERS


def parse_args(argv: list[str]) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = cli.OneLineParser(prog="sample.py", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", help="training workdir (config.json, checkpoints/)")
  p.add_argument("--pretrained", help="a diffusers UNet2DModel folder instead of --workdir")
  p.add_argument("--step", type=int, help="checkpoint step (default: newest)")
  p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--sampler", help=f"one of {', '.join(SAMPLERS)} (default: config.sample)")
  p.add_argument("--num_samples", type=int, help="default: config.sample.num_samples")
  p.add_argument("--batch_size", type=int, help="images per batch (default: all, <= 256)")
  p.add_argument("--num_steps", type=int, help="default: config.sample's, else the sampler's")
  p.add_argument("--eta", type=float, help="DDIM noise scale (default: config.sample.eta)")
  p.add_argument("--guidance_scale", type=float, help="classifier-free guidance scale")
  p.add_argument("--labels", help="comma-separated class labels, cycled over the samples")
  p.add_argument("--prompt", action="append",
                 help="a caption model's caption (repeat for several, cycled over the samples)")
  p.add_argument("--seed", type=int, help="default: config.sample.seed")
  p.add_argument("--dynamic_threshold", type=float, help="percentile (Saharia et al. 2022)")
  p.add_argument("--no_clip", action="store_true", help="do not clip predicted x0 to [-1, 1]")
  p.add_argument("--image", help="PNG to inpaint (with --mask) or edit (SDEdit)")
  p.add_argument("--mask", help="PNG mask for inpainting: white = keep, black = fill")
  p.add_argument("--strength", type=float, default=0.5, help="SDEdit strength in (0, 1]")
  p.add_argument("--jump_length", type=int, default=1, help="RePaint jump length")
  p.add_argument("--resample_count", type=int, default=1, help="RePaint resampling count")
  p.add_argument("--condition", help="image-to-image input: an image or .npz of conditions")
  p.add_argument("--aug_level", type=float, help="condition augmentation level in [0, 1]")
  p.add_argument("--cascade", nargs="+", help="super-resolution workdirs after --workdir")
  p.add_argument("--reference", help="ILVR reference image (unconditional runs)")
  p.add_argument("--ilvr_factor", type=int, help="ILVR low-pass block size N")
  p.add_argument("--rows", type=int, help="grid rows (default: near square)")
  p.add_argument("--out", help="output folder (default: the workdir)")
  p.add_argument("--name", help="file stem (default: samples_<sampler>_<step>_seed<seed>)")
  args = p.parse_args(argv)
  if (args.workdir is None) == (args.pretrained is None):
    raise cli.CliError("give exactly one of --workdir (a training run) and --pretrained")
  if args.sampler is not None and args.sampler not in SAMPLERS:
    raise cli.CliError(f"--sampler {args.sampler!r} does not exist; choose one of "
                       f"{', '.join(SAMPLERS)}")
  for name, value in (("num_samples", args.num_samples), ("batch_size", args.batch_size),
                      ("num_steps", args.num_steps)):
    if value is not None and value < 1:
      raise cli.CliError(f"--{name} must be >= 1, got {value}")
  return args


def run(args: argparse.Namespace) -> tuple[str, ...]:
  """Samples as `args` says; returns the paths written (PNG grid or words .txt, .npz)."""
  mesh = parallel.make_mesh()
  config, model, params, process, step = cli.load_model(args, mesh)
  out_dir = args.out or args.workdir or "."
  cli.check_writable_dir(out_dir, flag="--out" if args.out else "--workdir")
  for name in ("sampler", "seed", "num_samples"):
    setattr(args, name, config.sample[name] if getattr(args, name) is None else getattr(args, name))
  conditions, references = cli.conditions_and_references(args, config)
  stages = cli.load_cascade(args, mesh, config, model, params) if args.cascade else None
  request = cli.sampling_request(args, config, conditions,
                                 augmented=[stage[0] for stage in stages[1:]] if stages else None)
  key = jax.random.PRNGKey(args.seed)
  with tqdm.tqdm(desc=args.sampler, unit="batch", disable=jax.process_index() != 0) as bar:
    try:
      if stages:
        low, samples = generation.sample_cascade(stages, key, request, mesh=mesh)[-2:]
        request, config = dataclasses.replace(request, conditions=low), stages[-1][0]
      else:
        samples = generation.sample_batches(config, model, params, key, request, mesh=mesh,
                                            process=process,
                                            on_batch=lambda done, total: bar.update(1))
    except ValueError as e:  # the runner's checks of the request (before compiling)
      raise cli.CliError(f"--sampler {args.sampler}: {e}") from None
  stem = os.path.join(out_dir, args.name or f"samples_{args.sampler}_{step}_seed{args.seed}")
  if jax.process_index() == 0:
    return cli.write_samples(stem, samples, request, config, references=references,
                             rows=args.rows)
  return stem + ".png", stem + ".npz"


def main(argv: list[str]) -> int:
  """Entry point: runs `run`, printing a user error as one line on stderr (exit code 2)."""
  runtime.setup()  # The persistent compilation cache ($JAXDIFF_COMPILATION_CACHE or "off").
  try:
    args = parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    paths = run(args)
  except cli.CliError as e:
    print(f"sample.py: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {' and '.join(paths)}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
