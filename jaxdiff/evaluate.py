"""Evaluates a training workdir: `python -m jaxdiff.evaluate --workdir DIR [options]`.

Metrics (`--metrics`, comma-separated; see jaxdiff.job.evaluation):
  bpd            test-set bits/dim with the full variational bound, and its standard error
  classifier_fd  Frechet distance in the features of a small classifier trained on the data
  fid            FID and Inception Score; needs --inception_weights (FID Inception .npz)
  reconstruction an autoencoder run's PSNR on --bpd_split (first --bpd_examples images) and
                 the statistics of its latents; with classifier_fd, the classifier Frechet
                 distance of those reconstructions and of the same real images (its floor)
  prompt_accuracy  share of samples asked for class k (label, or class name as caption)
                 that the classifier of classifier_fd assigns to k, at each --guidance_scale
  restoration    PSNR, SSIM (the consistency error of super-resolution, the hole PSNR of
                 inpainting and uncropping) of an image-to-image run's sample.py .npz
                 (--samples, with its "inputs", "references" and "masks") beside the
                 task's trivial baseline (bicubic upsampling, harmonic hole filling, the
                 gray image, the JPEG); with classifier_fd also the baseline's distance
  words          a word-list run's samples: shares well formed, in the word list, in the
                 training split, new; unigram and bigram baselines' shares in the list

Samples come from the workdir's newest (or --step) checkpoint, EMA parameters unless
--no-ema, with config.sample's sampler (--sampler/--num_steps/--eta override it), or from
an .npz of uint8 images written by sample.py (--samples). Results are printed as JSON and
then written to WORKDIR/eval_<step>.json (or --out); where they and the cache go is checked
to be writable before anything is computed.

Example:
    python -m jaxdiff.evaluate --workdir runs/digits --metrics bpd,classifier_fd \\
        --bpd_split test --bpd_examples 256 --num_samples 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import jax
import numpy as np
import tqdm
from absl import logging as absl_logging

from jaxdiff import images, parallel
from jaxdiff.config import builders, sampling, validation
from jaxdiff.job import cli, runtime
from jaxdiff.job import evaluation as metrics


def parse_args(argv: list[str]) -> argparse.Namespace:
  """The command line (see the module docstring)."""
  p = cli.OneLineParser(prog="python -m jaxdiff.evaluate",
                        description=__doc__.split("\n")[0])
  p.add_argument("--workdir", help="training workdir")
  p.add_argument("--pretrained", help="a diffusers UNet2DModel folder instead of --workdir")
  p.add_argument("--dataset", help="data set of the references (TFDS name; default: the "
                                   "run's config.data.name)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
  p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--metrics", default="bpd,classifier_fd",
                 help=f"comma-separated subset of {','.join(metrics.TOOL_METRICS)}")
  p.add_argument("--samples", default=None, help=".npz of uint8 images to score instead "
                                                 "of sampling")
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--batch_size", type=int, default=256, help="images per sampling call")
  p.add_argument("--sampler", default=None,
                 help="a sampler of jaxdiff.config.sampling (default: config.sample)")
  p.add_argument("--num_steps", type=int, default=None)
  p.add_argument("--eta", type=float, default=None)
  p.add_argument("--guidance_scale", default=None,
                 help="comma-separated guidance scales for prompt_accuracy (default: "
                      "config.sample's)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--reference_split", default=None,
                 help="data split of the reference statistics (default: config.data.split)")
  p.add_argument("--bpd_split", default="test",
                 help="held-out split for bpd, e.g. test or 'test[:100]' (default: test)")
  p.add_argument("--bpd_examples", type=int, default=None, help="first N examples only")
  p.add_argument("--bpd_batch_size", type=int, default=64)
  p.add_argument("--inception_weights", default=None, help="FID Inception weights (.npz)")
  p.add_argument("--cache_dir", default=None, help="default: $JAXDIFF_CACHE or "
                                                   "~/.cache/jaxdiff")
  p.add_argument("--out", default=None, help="JSON output (default: WORKDIR/eval_<step>.json)")
  p.add_argument("--compilation_cache", default=None,
                 help="persistent compilation cache directory, or 'off' (default: "
                      "$JAXDIFF_COMPILATION_CACHE, else ~/.cache/jaxdiff/xla/<host>)")
  args = p.parse_args(argv)
  if (args.workdir is None) == (args.pretrained is None):
    raise cli.CliError("give exactly one of --workdir (a training run) and --pretrained")
  _parse_metrics(args)
  for name in ("num_samples", "batch_size", "bpd_batch_size", "bpd_examples", "num_steps"):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise cli.CliError(f"--{name} must be >= 1, got {value}")
  return args


def _parse_metrics(args: argparse.Namespace) -> None:
  """Splits --metrics and --guidance_scale into lists; checks each metric has its inputs."""
  args.metrics = [m for m in args.metrics.split(",") if m]
  unknown = [m for m in args.metrics if m not in metrics.TOOL_METRICS]
  if unknown or not args.metrics:
    raise cli.CliError(f"--metrics: unknown metric(s) {unknown or args.metrics}; choose from "
                   f"{', '.join(metrics.TOOL_METRICS)}")
  if args.guidance_scale is not None:
    try:
      args.guidance_scale = [float(v) for v in args.guidance_scale.split(",")]
    except ValueError:
      raise cli.CliError(f"--guidance_scale {args.guidance_scale!r}: expected comma-separated "
                         "numbers") from None
  if "restoration" in args.metrics and args.samples is None:
    raise cli.CliError("--metrics restoration scores a sample.py .npz of an image-to-image "
                       "run: give --samples")
  if "fid" in args.metrics and not args.inception_weights:
    raise cli.CliError("--metrics fid needs --inception_weights (the FID Inception .npz; see "
                   "jaxdiff/evaluation/inception.py for the conversion)")


def _load_samples(path: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  """uint8 images of a sample.py .npz, as floats in [-1, 1]; checks their shape."""
  if not os.path.isfile(path):
    raise cli.CliError(f"--samples: no file at {path!r}")
  with np.load(path) as data:
    if "images" not in data.files:
      raise cli.CliError(f"--samples {path!r} has no 'images' array (keys: {data.files})")
    samples = data["images"]
  if samples.ndim != 4 or samples.shape[1:] != image_shape or samples.dtype != np.uint8:
    raise cli.CliError(f"--samples {path!r} holds {samples.dtype} {samples.shape}; expected "
                   f"uint8 [N, {', '.join(map(str, image_shape))}]")
  return images.from_uint8(samples)


def _check_run_kind(args: argparse.Namespace, config: Any) -> None:
  """An autoencoder run has only "reconstruction"; a latent run has no image bits/dim."""
  autoencoder = config.model.name == "autoencoder_kl"
  if autoencoder and ("reconstruction" not in args.metrics
                      or set(args.metrics) - {"reconstruction", "classifier_fd"}):
    raise cli.CliError(f"--metrics {','.join(args.metrics)}: an autoencoder run has "
                       "'reconstruction' (and 'classifier_fd' of its reconstructions) only")
  if not autoencoder and "reconstruction" in args.metrics:
    raise cli.CliError("--metrics reconstruction: only an autoencoder run has it")
  if "bpd" in args.metrics and builders.is_latent(config):
    raise cli.CliError("--metrics bpd: this run diffuses latents; their bits/dim are not the "
                       "images'")


def _restoration(args: argparse.Namespace, config: Any) -> dict[str, Any]:
  """`metrics.restoration_metrics` of a sample.py .npz ("images", "inputs", "references";
  "masks" for inpainting and uncropping); with classifier_fd also the classifier Frechet
  distance of the trivial baseline's images ("baseline_classifier_fd")."""
  path = args.samples
  with np.load(path) as data:
    missing = [k for k in ("images", "inputs", "references") if k not in data.files]
    if missing:
      raise cli.CliError(f"--samples {path!r} has no {missing} (keys: {data.files}); "
                         "restoration needs sample.py's output on the test conditions")
    arrays = [images.from_uint8(data[k]) for k in ("images", "inputs", "references")]
    known = data["masks"] > 0 if "masks" in data.files else None
  try:
    baseline = metrics.restoration_baseline(config, arrays[1], known=known)
    results = metrics.restoration_metrics(config, *arrays, known=known, baseline=baseline)
    if "classifier_fd" in args.metrics:
      results["baseline_classifier_fd"] = metrics.classifier_frechet_distance(
          _classifier_reference(args, config), images.from_uint8(images.to_uint8(baseline)))
  except ValueError as e:
    raise cli.CliError(f"--metrics restoration: {e}") from None
  return results


def _check_sampler(args: argparse.Namespace, config: Any) -> None:
  """Applies --sampler / --num_steps / --eta to config.sample and checks they can run."""
  for field in ("sampler", "num_steps", "eta"):
    if getattr(args, field) is not None:
      config.sample[field] = getattr(args, field)
  if config.sample.sampler not in sampling.GRID_SAMPLERS:
    raise cli.CliError(f"--sampler {config.sample.sampler!r} does not exist here; choose one of "
                       f"{', '.join(sampling.GRID_SAMPLERS)}")
  try:
    sampling.check_fits(config.sample.sampler, config, num_steps=config.sample.num_steps)
  except ValueError as e:
    raise cli.CliError(f"--sampler {config.sample.sampler}: {e}") from None
  if "bpd" in args.metrics and config.diffusion.objective not in validation.BPD_OBJECTIVES:
    raise cli.CliError(f"--metrics bpd is a variational bound; this run's objective is "
                       f"{config.diffusion.objective!r}, not one of "
                       f"{validation.BPD_OBJECTIVES}")
  if "words" in args.metrics and config.data.source != "words":
    raise cli.CliError(f"--metrics words scores a word-list run; this run's data source is "
                       f"{config.data.source!r}")


def _bpd(args: argparse.Namespace, run: tuple, rng: jax.Array, mesh: Any) -> dict[str, Any]:
  config, model, params, process, _ = run
  with tqdm.tqdm(desc="bits/dim", unit="batch") as bar:
    def progress(done: int, total: int) -> None:
      bar.total = total
      bar.update(done - bar.n)
    bpd = metrics.evaluate_bpd(config, model, params, jax.random.fold_in(rng, 1),
                               split=args.bpd_split, max_examples=args.bpd_examples,
                               batch_size=args.bpd_batch_size, mesh=mesh, on_batch=progress,
                               schedule=process)
  return dict(bpd=bpd.bpd, bpd_stderr=bpd.stderr, bpd_prior=bpd.prior_bpd,
              bpd_decoder=float(bpd.vb[0]), bpd_examples=bpd.num_examples)


def _sample_metrics(args: argparse.Namespace, run: tuple, rng: jax.Array,
                    mesh: Any) -> dict[str, Any]:
  """classifier_fd, FID + IS and / or the word-list shares of samples drawn through the one
  generation path."""
  config, model, params, process, _ = run
  cache_dir = args.cache_dir or metrics.default_cache_dir()
  if args.samples is not None:
    samples = _load_samples(args.samples, builders.image_shape(config))
  else:
    samples = metrics.generate_samples(config, model, params, rng, num_samples=args.num_samples,
                                       batch_size=min(args.batch_size, args.num_samples),
                                       mesh=mesh, process=process)
  results: dict[str, Any] = {"num_samples": len(samples)}
  if "words" in args.metrics:
    results.update(metrics.word_metrics(config, samples, seed=args.seed))
  if "classifier_fd" in args.metrics:
    results["classifier_fd"] = metrics.classifier_frechet_distance(
        _classifier_reference(args, config), samples)
  if "fid" in args.metrics:
    try:
      reference = metrics.inception_reference(config.data, weights_path=args.inception_weights,
                                              cache_dir=cache_dir, split=args.reference_split)
    except (FileNotFoundError, ValueError) as e:
      raise cli.CliError(f"--inception_weights: {e}") from None
    results.update(metrics.fid_and_inception_score(reference, samples))
  return results


def _check_destinations(args: argparse.Namespace) -> None:
  """Raises CliError before any compute when the results or the cache cannot be written."""
  if args.out is not None:
    cli.check_output_file(args.out, flag="--out")
  else:
    cli.check_writable_dir(args.workdir or ".", flag="--workdir (where eval_<step>.json goes)")
  if {"classifier_fd", "fid"} & set(args.metrics):
    cli.check_writable_dir(args.cache_dir or metrics.default_cache_dir(), flag="--cache_dir")


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Computes the requested metrics; returns them (with step and settings) as a dict."""
  _check_destinations(args)
  mesh = parallel.make_mesh()
  loaded = cli.load_model(args, mesh)
  config = loaded[0]
  if args.dataset is not None:
    config.data.update(name=args.dataset)
  _check_run_kind(args, config)
  if config.model.name != "autoencoder_kl":
    _check_sampler(args, config)
  rng = jax.random.PRNGKey(args.seed)
  results: dict[str, Any] = {"step": loaded[4], "ema": args.ema}
  if "bpd" in args.metrics:
    results.update(_bpd(args, loaded, rng, mesh))
  if "restoration" in args.metrics:
    results.update(_restoration(args, config))
  if "reconstruction" in args.metrics:
    reference = _classifier_reference(args, config) if "classifier_fd" in args.metrics else None
    results.update(metrics.reconstruction_metrics(
        config, loaded[1], loaded[2], rng, split=args.bpd_split,
        max_examples=args.bpd_examples or 1000, batch_size=args.batch_size,
        reference=reference))
  elif {"classifier_fd", "fid", "words"} & set(args.metrics):
    results.update(_sample_metrics(args, loaded, rng, mesh))
  if "prompt_accuracy" in args.metrics:
    results["prompt_accuracy"] = _prompt_accuracy(args, loaded, rng, mesh)
  return results


def _classifier_reference(args: argparse.Namespace, config: Any) -> Any:
  """The data's classifier and the feature statistics of --reference_split (cached)."""
  return metrics.classifier_reference(
      config.data, cache_dir=args.cache_dir or metrics.default_cache_dir(),
      split=args.reference_split)


def _prompt_accuracy(args: argparse.Namespace, run: tuple, rng: jax.Array,
                     mesh: Any) -> dict[str, float]:
  """prompt_accuracy at each --guidance_scale, from the same keys."""
  config, model, params = run[:3]
  reference = _classifier_reference(args, config)
  scales = args.guidance_scale or [config.sample.guidance_scale]
  try:
    return {str(scale): metrics.prompt_accuracy(
        config, model, params, rng, reference, num_samples=args.num_samples,
        batch_size=min(args.batch_size, args.num_samples), guidance_scale=scale, mesh=mesh)
        for scale in scales}
  except ValueError as e:
    raise cli.CliError(f"--metrics prompt_accuracy: {e}") from None


def main(argv: Optional[list[str]] = None) -> int:
  """Entry point: prints the results as JSON; a user error is one line on stderr (exit 2)."""
  try:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    runtime.setup(compilation_cache=args.compilation_cache)
    results = run(args)
  except cli.CliError as e:
    print(f"jaxdiff.evaluate: error: {e}", file=sys.stderr)
    return 2
  if jax.process_index() == 0:
    print(json.dumps(results), flush=True)  # First: a failed write loses no result.
    out = args.out or os.path.join(args.workdir or ".", f"eval_{results['step']}.json")
    try:
      with open(out, "w") as f:
        json.dump(results, f, indent=2)
    except OSError as e:
      print(f"jaxdiff.evaluate: error: cannot write {out} ({e.strerror or e}); the results "
            "are printed above", file=sys.stderr)
      return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
