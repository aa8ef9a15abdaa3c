"""Samples a trained model: `python sample.py --workdir DIR [--sampler NAME] [options]`.

Reads the run's config.json and newest (or `--step`) checkpoint from DIR, samples with the
EMA parameters (`--no-ema` for the raw ones), sharded over all devices, and writes a PNG
grid and an .npz of uint8 images (key "images", and "labels" for a class-conditional
model) into DIR or `--out`. Deterministic for a fixed `--seed` and `--batch_size`.
Options not given (sampler, steps, eta, seed) default to the run's config.sample.

Samplers (the table `jaxdiff.sampling.SAMPLERS`, also used by the trainer): for
objective "ddpm" ddpm (Ho et al. 2020), ddim (Song et al. 2021; --eta), inpaint (RePaint,
Lugmayr et al. 2022; --image and --mask, white = keep), sdedit (Meng et al. 2022; --image,
--strength); for "sde_dsm" (and "ddpm" eps models on the linear schedule) the SDE samplers
pc, ode, dpm_solver_pp_2m, edm_heun; for "ncsn" ald (annealed Langevin dynamics; --num_steps
per noise level). A sampler that does not fit the run's objective is refused.

Examples:
    python sample.py --workdir runs/digits --num_samples 64 --seed 1
    python sample.py --workdir runs/digits --sampler ddim --num_steps 50 --eta 0.5
    python sample.py --workdir runs/digits --sampler inpaint --image x.png --mask m.png
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging as absl_logging
from jax.experimental import multihost_utils

from jaxdiff import images, parallel, samplers
from jaxdiff.config import builders, sampling
from jaxdiff.job import cli, generation, runtime


SAMPLERS = sampling.SAMPLERS
_INPUT_FLAGS = {"guide": "image", "mask": "mask"}  # Job field -> command-line flag


class _StepCounter:
  """Counts the model evaluations of a running chain on a progress bar (host callback)."""
  bar: Optional[tqdm.tqdm] = None


def _count_step(t: np.ndarray) -> None:
  del t
  if _StepCounter.bar is not None:
    _StepCounter.bar.update(1)


def _with_progress(model_fn: Any, x_t: jax.Array, t: jax.Array) -> jax.Array:
  """`model_fn(x_t, t)`, ticking the progress bar once per call from inside the jit."""
  jax.debug.callback(_count_step, t[:1])
  return model_fn(x_t, t)


def _check_sampler_inputs(args: argparse.Namespace) -> None:
  """Raises CliError for an unknown sampler or a missing or unused --image / --mask."""
  if args.sampler not in SAMPLERS:
    raise cli.CliError(f"--sampler {args.sampler!r} does not exist; choose one of "
                   f"{', '.join(SAMPLERS)}")
  needs = {_INPUT_FLAGS[field] for field in SAMPLERS[args.sampler].inputs}
  for name in ("image", "mask"):
    needed = name in needs
    if needed and getattr(args, name) is None:
      raise cli.CliError(f"--sampler {args.sampler} needs --{name}")
    if not needed and getattr(args, name) is not None:
      raise cli.CliError(f"--{name} is not used by --sampler {args.sampler}")


def _with_config_defaults(args: argparse.Namespace, sample_config: Any) -> argparse.Namespace:
  """A copy of `args` whose unset sampler, num_steps, eta and seed come from config.sample."""
  args = argparse.Namespace(**vars(args))
  for name in ("sampler", "num_steps", "eta", "seed"):
    if getattr(args, name) is None:
      setattr(args, name, sample_config[name])
  _check_sampler_inputs(args)
  return args


def parse_args(argv: list[str]) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = cli.OneLineParser(prog="sample.py", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                 help="sample with the EMA parameters (default) or the raw ones")
  p.add_argument("--sampler", default=None,
                 help=f"one of {', '.join(SAMPLERS)} (default: config.sample.sampler)")
  p.add_argument("--num_samples", type=int, default=None,
                 help="images to draw (default: config.sample.num_samples)")
  p.add_argument("--batch_size", type=int, default=None,
                 help="images per sampling call (default: all, at most 256)")
  p.add_argument("--num_steps", type=int, default=None,
                 help="sampling steps (ald: per noise level; ode: unused, adaptive); default: "
                      "config.sample.num_steps, else each sampler's own (see "
                      "jaxdiff.config.sampling)")
  p.add_argument("--eta", type=float, default=None,
                 help="DDIM noise scale eta (default: config.sample.eta)")
  p.add_argument("--guidance_scale", type=float, default=None,
                 help="classifier-free guidance scale (default: config.sample.guidance_scale)")
  p.add_argument("--labels", default=None,
                 help="comma-separated class labels, cycled over the samples "
                      "(default: 0, 1, ..., K-1, 0, ...)")
  p.add_argument("--seed", type=int, default=None, help="default: config.sample.seed")
  p.add_argument("--dynamic_threshold", type=float, default=None,
                 help="percentile for dynamic thresholding of x0 (Saharia et al. 2022)")
  p.add_argument("--no_clip", action="store_true",
                 help="do not clip predicted x0 to [-1, 1] (else config.sample.clip_denoised)")
  p.add_argument("--image", default=None, help="PNG to inpaint or edit (sdedit)")
  p.add_argument("--mask", default=None, help="PNG mask for inpaint: white = keep, black = fill")
  p.add_argument("--strength", type=float, default=0.5, help="SDEdit strength in (0, 1]")
  p.add_argument("--jump_length", type=int, default=1, help="RePaint jump length")
  p.add_argument("--resample_count", type=int, default=1, help="RePaint resampling count")
  p.add_argument("--rows", type=int, default=None, help="grid rows (default: near square)")
  p.add_argument("--out", default=None, help="output folder (default: the workdir)")
  p.add_argument("--name", default=None,
                 help="output file stem (default: samples_<sampler>_<step>_seed<seed>)")
  args = p.parse_args(argv)
  if args.sampler is not None:
    _check_sampler_inputs(args)
  for name in ("num_samples", "batch_size", "num_steps"):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise cli.CliError(f"--{name} must be >= 1, got {value}")
  return args


def _parse_labels(text: Optional[str], *, num_classes: Optional[int],
                  num_samples: int) -> Optional[np.ndarray]:
  """int32 labels [num_samples] for a class-conditional model, else None."""
  if num_classes is None:
    if text is not None:
      raise cli.CliError(f"--labels {text!r} given, but the model is unconditional "
                     f"(config.model.num_classes is None)")
    return None
  if text is None:
    wanted = np.arange(num_classes)
  else:
    try:
      wanted = np.array([int(v) for v in text.split(",")])
    except ValueError:
      raise cli.CliError(f"--labels {text!r}: expected comma-separated integers") from None
  bad = wanted[(wanted < 0) | (wanted >= num_classes)]
  if bad.size:
    raise cli.CliError(f"--labels: class {int(bad[0])} does not exist; the model has "
                   f"{num_classes} classes (0..{num_classes - 1})")
  return np.resize(wanted, num_samples).astype(np.int32)


def _load_guide(args: argparse.Namespace, image_shape: tuple[int, int, int]
                ) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
  """The --image as [H, W, C] floats in [-1, 1] and the --mask as [1, H, W, 1] bools."""
  height, width, channels = image_shape
  guide = mask = None
  if args.image is not None:
    if not os.path.isfile(args.image):
      raise cli.CliError(f"--image: no file at {args.image!r}")
    guide = images.load_png(args.image, channels=channels)
    if guide.shape[:2] != (height, width):
      raise cli.CliError(f"--image {args.image!r} is {guide.shape[0]}x{guide.shape[1]}; the "
                     f"model's images are {height}x{width}")
    guide = images.from_uint8(guide)
  if args.mask is not None:
    if not os.path.isfile(args.mask):
      raise cli.CliError(f"--mask: no file at {args.mask!r}")
    mask = images.load_png(args.mask, channels=1)
    if mask.shape[:2] != (height, width):
      raise cli.CliError(f"--mask {args.mask!r} is {mask.shape[0]}x{mask.shape[1]}; expected "
                     f"{height}x{width} like the model's images")
    mask = (mask >= 128)[None]
  return guide, mask


def run(args: argparse.Namespace) -> tuple[str, str]:
  """Samples as `args` says; returns the paths of the PNG grid and the .npz written."""
  mesh = parallel.make_mesh()
  config, restored = cli.load_run(args.workdir, step=args.step, mesh=mesh)
  args = _with_config_defaults(args, config.sample)
  try:
    sampling.check_fits(args.sampler, config.diffusion, num_steps=args.num_steps)
  except ValueError as e:
    raise cli.CliError(f"--sampler {args.sampler}: {e}") from None
  if args.dynamic_threshold is not None and not SAMPLERS[args.sampler].discrete:
    raise cli.CliError(f"--dynamic_threshold is not used by --sampler {args.sampler}")
  params = restored.state.ema_params if args.ema else restored.state.params
  model = builders.build_model(config)
  image_shape = builders.image_shape(config)
  num_samples = args.num_samples or config.sample.num_samples
  if args.rows is not None and not 1 <= args.rows <= num_samples:
    raise cli.CliError(f"--rows must be in [1, {num_samples}], got {args.rows}")
  labels = _parse_labels(args.labels, num_classes=config.model.num_classes,
                         num_samples=num_samples)
  guide, mask = _load_guide(args, image_shape)
  batch_size = min(args.batch_size or min(num_samples, 256), num_samples)
  batch_size = -(-batch_size // mesh.size) * mesh.size
  if args.guidance_scale is not None and config.model.num_classes is None:
    raise cli.CliError("--guidance_scale needs a class-conditional model; this one is "
                   "unconditional (config.model.num_classes is None)")
  guidance = (config.sample.guidance_scale if args.guidance_scale is None
              else args.guidance_scale)
  denoised_fn = (None if args.dynamic_threshold is None else jax.tree_util.Partial(
      samplers.dynamic_threshold, percentile=args.dynamic_threshold))
  shape = (batch_size,) + image_shape
  batch_sharding = parallel.batch_sharding(mesh)
  draw_noise = jax.jit(lambda key: jax.random.normal(key, shape), out_shardings=batch_sharding)
  sampler = SAMPLERS[args.sampler].run
  seed_key = jax.random.PRNGKey(args.seed)
  num_batches = -(-num_samples // batch_size)
  outputs = []
  _StepCounter.bar = tqdm.tqdm(unit="step", disable=jax.process_index() != 0)
  for index in range(num_batches):
    _StepCounter.bar.set_description(f"{args.sampler}: batch {index + 1}/{num_batches}")
    noise_key, chain_key = jax.random.split(jax.random.fold_in(seed_key, index))
    batch_labels = None
    if labels is not None:
      rows = np.resize(labels[index * batch_size:(index + 1) * batch_size], batch_size)
      batch_labels = jax.device_put(rows, batch_sharding)
    job = sampling.Job(
        model_fn=jax.tree_util.Partial(_with_progress, generation.model_fn_for(
            model, params, labels=batch_labels, guidance_scale=guidance,
            null_label=config.model.num_classes)),
        diffusion=config.diffusion, rng=chain_key, x_T=draw_noise(noise_key),
        num_steps=args.num_steps, eta=args.eta,
        clip_denoised=config.sample.clip_denoised and not args.no_clip,
        denoised_fn=denoised_fn, step_lr=config.sample.ald_step_lr,
        guide=None if guide is None else jax.device_put(
            np.broadcast_to(guide, shape), batch_sharding),
        mask=None if mask is None else jnp.asarray(mask), strength=args.strength,
        jump_length=args.jump_length, resample_count=args.resample_count)
    try:
      batch = sampler(job)
    except ValueError as e:  # the samplers' checks of their options (steps, strength, ...)
      raise cli.CliError(f"--sampler {args.sampler}: {e}") from None
    outputs.append(np.asarray(multihost_utils.process_allgather(batch, tiled=True)))
  _StepCounter.bar.close()
  samples = images.to_uint8(np.concatenate(outputs)[:num_samples])
  out_dir = args.out or args.workdir
  stem = args.name or f"samples_{args.sampler}_{restored.step}_seed{args.seed}"
  png_path, npz_path = (os.path.join(out_dir, stem + ext) for ext in (".png", ".npz"))
  if jax.process_index() == 0:
    images.save_grid(png_path, samples, rows=args.rows)
    images.save_npz(npz_path, samples, labels=labels)
  return png_path, npz_path


def main(argv: list[str]) -> int:
  """Entry point: runs `run`, printing a user error as one line on stderr (exit code 2)."""
  runtime.setup()  # The persistent compilation cache ($JAXDIFF_COMPILATION_CACHE or "off").
  try:
    args = parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    png_path, npz_path = run(args)
  except cli.CliError as e:
    print(f"sample.py: error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {png_path} and {npz_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
