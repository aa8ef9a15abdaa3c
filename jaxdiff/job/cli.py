"""Shared plumbing of the command-line tools (`sample.py`, `python -m jaxdiff.evaluate`).

User errors are raised as :class:`CliError` and printed as one line, without a traceback.
Output destinations are checked before any compute (`check_writable_dir`,
`check_output_file`), so that an unwritable place fails at once, not after the work.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

import ml_collections
import numpy as np

from jaxdiff import images, parallel
from jaxdiff.config import builders, sampling, schema
from jaxdiff.job import checkpoints, generation, latents
from jaxdiff.models import diffusers_scheduler, pretrained


class CliError(Exception):
  """A user error, reported as one line."""


class OneLineParser(argparse.ArgumentParser):
  """An argument parser whose errors are a :class:`CliError` instead of usage + exit."""

  def error(self, message: str) -> None:  # type: ignore[override]
    raise CliError(message)


def load_run(workdir: str, *, step: int | None, mesh: Any) -> tuple[ml_collections.ConfigDict, Any]:
  """The run's config and its (newest or given) checkpoint, replicated over ``mesh``.

  Raises:
    CliError: if the workdir has no config or checkpoint, or none that can be read.
  """
  try:
    return checkpoints.load_workdir(workdir, step=step, sharding=parallel.replicated(mesh))
  except (FileNotFoundError, RuntimeError, checkpoints.CheckpointMismatch) as e:
    raise CliError(str(e)) from None


def unwritable_reason(directory: str | os.PathLike) -> str | None:
  """Why files cannot be written into `directory` (created when missing), or None.

  Creates and removes a temporary file there: the one test that file modes, read-only
  mounts, full quotas and running as root all answer truthfully.
  """
  directory = os.fspath(directory)
  if "://" in directory:
    return None  # An object store: nothing to probe without writing an object.
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test_"):
      pass
  except OSError as e:
    return f"{type(e).__name__}: {e.strerror or e}"
  return None


def check_writable_dir(path: str | os.PathLike, *, flag: str) -> None:
  """Raises CliError naming `flag` unless files can be written into the directory `path`
  (created when missing), checked before any compute is spent."""
  reason = unwritable_reason(path)
  if reason:
    raise CliError(f"{flag} {os.fspath(path)!r} is not a writable directory ({reason})")


def check_output_file(path: str | os.PathLike, *, flag: str) -> None:
  """Raises CliError naming `flag` when the file `path` cannot be written (its folder is
  not writable, or it is a folder or a read-only file)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    raise CliError(f"{flag} {path!r} is a directory; expected a file path")
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise CliError(f"{flag} {path!r} is not writable (a read-only file)")
  check_writable_dir(os.path.dirname(os.path.abspath(path)), flag=flag)


def parse_labels(text: str | None, *, num_classes: int | None,
                 num_samples: int) -> np.ndarray | None:
  """int32 labels [num_samples] cycling ``text`` ("3,5") or 0..K-1 for a class-conditional
  model; None for an unconditional one (where ``text`` is an error)."""
  if num_classes is None:
    if text is not None:
      raise CliError(f"--labels {text!r} given, but the model is unconditional "
                     f"(config.model.num_classes is None)")
    return None
  wanted = None
  if text is not None:
    try:
      wanted = np.array([int(v) for v in text.split(",")])
    except ValueError:
      raise CliError(f"--labels {text!r}: expected comma-separated integers") from None
    bad = wanted[(wanted < 0) | (wanted >= num_classes)]
    if bad.size:
      raise CliError(f"--labels: class {int(bad[0])} does not exist; the model has "
                     f"{num_classes} classes (0..{num_classes - 1})")
  return generation.cycled_labels(num_classes, num_samples, wanted)


def caption_tokens(prompts: list[str] | None, labels_text: str | None,
                   config: ml_collections.ConfigDict, *, num_samples: int) -> np.ndarray | None:
  """A caption model's token ids [num_samples, L]: the --prompt captions, or the class names
  of --labels (default: every class), cycled; None for other models (where --prompt is an
  error)."""
  if config.conditioner.name != "text":
    if prompts:
      raise CliError("--prompt needs a caption model (config.conditioner.name='text'); this "
                     "run has none")
    return None
  if prompts and labels_text is not None:
    raise CliError("give --prompt or --labels, not both")
  captions = builders.caption_set(config)
  if not prompts:
    wanted = parse_labels(labels_text, num_classes=len(captions.class_names),
                          num_samples=num_samples)
    return generation.class_captions(config, num_samples,
                                     None if labels_text is None else wanted)
  try:
    rows = np.stack([captions.tokenize(text, max_length=config.conditioner.max_length)
                     for text in prompts])
  except ValueError as e:
    raise CliError(f"--prompt: {e}") from None
  return rows[np.arange(num_samples) % len(rows)]


def _load_image(path: str, flag: str, *, channels: int, size: tuple[int, int]) -> np.ndarray:
  if not os.path.isfile(path):
    raise CliError(f"{flag}: no file at {path!r}")
  image = images.load_png(path, channels=channels)
  if image.shape[:2] != size:
    raise CliError(f"{flag} {path!r} is {image.shape[0]}x{image.shape[1]}; expected "
                   f"{size[0]}x{size[1]}, the model's image size")
  return image


def load_guide(image_path: str | None, mask_path: str | None, image_shape: tuple[int, int, int]
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """--image as [H, W, C] floats in [-1, 1] and --mask as [1, H, W, 1] bools (white = keep)."""
  if mask_path is not None and image_path is None:
    raise CliError("--mask needs --image, the picture to inpaint")
  size, channels = image_shape[:2], image_shape[2]
  guide = mask = None
  if image_path is not None:
    guide = images.from_uint8(_load_image(image_path, "--image", channels=channels, size=size))
  if mask_path is not None:
    mask = (_load_image(mask_path, "--mask", channels=1, size=size) >= 128)[None]
  return guide, mask


def load_pretrained_run(directory: str) -> tuple[ml_collections.ConfigDict, Any, Any, Any]:
  """A diffusers UNet2DModel folder as a run: (config, module, params, schedule).

  The schedule, prediction, variance and clipping come from its scheduler config (in the
  folder or ../scheduler/); the config's data section gets the model's sample size and
  channels, so that the generation path and evaluation treat it like a trained run.
  """
  try:
    module, variables = pretrained.load_pretrained(directory)
    found = diffusers_scheduler.find_scheduler_config(directory)
    if found is None:
      raise ValueError(f"no scheduler_config.json in {directory!r} or ../scheduler/ beside it")
    model_config, scheduler_config = (_read_json(path) for path in (
        os.path.join(directory, "config.json"), found))
    schedule, options = diffusers_scheduler.schedule_from_scheduler_config(scheduler_config)
  except (OSError, ValueError) as e:
    raise CliError(f"--pretrained: {e}") from None
  if model_config.get("_class_name") != "UNet2DModel":
    raise CliError(f"--pretrained {directory!r} holds a {model_config.get('_class_name')}; "
                   "sampling needs a UNet2DModel folder")
  config = schema.base_config()
  config.data.update(image_size=model_config.get("sample_size", 32),
                     channels=model_config.get("in_channels", 3))
  config.diffusion.update(num_timesteps=schedule.num_timesteps,
                          prediction=options["prediction"], variance=options["variance"])
  config.model.update(learn_sigma=options["variance"].startswith("learned"),
                      num_classes=module.num_class_embeds)
  config.sample.update(sampler="ddim", clip_denoised=options["clip_denoised"])
  return config, module, variables["params"], schedule


def load_model(args: argparse.Namespace, mesh: Any) -> tuple:
  """(config, model, params, process, step label) of a tool's --workdir (with --step and
  --ema) or --pretrained; process is None for a run (its config names it)."""
  if getattr(args, "pretrained", None) is not None:
    config, model, params, process = load_pretrained_run(args.pretrained)
    return config, model, params, process, "pretrained"
  config, restored = load_run(args.workdir, step=args.step, mesh=mesh)
  try:
    latents.resolve_config(config)  # a latent run's autoencoder must still be there
  except ValueError as e:
    raise CliError(str(e)) from None
  params = restored.state.ema_params if args.ema else restored.state.params
  return config, builders.build_model(config), params, None, restored.step


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _runner_options(args: argparse.Namespace) -> dict:
  """The runner options of a command line: DDIM's eta, RePaint's jumps."""
  eta = args.eta is not None and sampling.SAMPLERS[args.sampler].sampler == "ddim"
  repaint = dict(jump_length=args.jump_length, resample_count=args.resample_count)
  return {**({"eta": args.eta} if eta else {}), **(repaint if args.mask else {})}


def sampling_request(args: argparse.Namespace, config: ml_collections.ConfigDict
                     ) -> generation.Request:
  """The generation request of sample.py's command line over config.sample's defaults,
  checked (missing inputs, options the sampler cannot run) before anything compiles."""
  for name in sampling.SAMPLERS[args.sampler].inputs:
    if getattr(args, name) is None:
      raise CliError(f"--sampler {args.sampler} needs --{name}")
  tokens = caption_tokens(args.prompt, args.labels, config, num_samples=args.num_samples)
  if (args.guidance_scale is not None and config.model.num_classes is None
      and tokens is None):
    raise CliError("--guidance_scale needs a conditional model; this one is "
                   "unconditional (config.model.num_classes is None, no conditioner)")
  if args.rows is not None and not 1 <= args.rows <= args.num_samples:
    raise CliError(f"--rows must be in [1, {args.num_samples}], got {args.rows}")
  options = _runner_options(args)
  try:
    sampling.check_fits(args.sampler, config, num_steps=args.num_steps,
                        **{k: v for k, v in options.items() if k == "eta"})
  except ValueError as e:
    raise CliError(f"--sampler {args.sampler}: {e}") from None
  guide, mask = load_guide(args.image, args.mask, (config.data.image_size,) * 2
                           + (config.data.channels,))
  return generation.request_from_config(
      config, num_samples=args.num_samples,
      batch_size=min(args.batch_size or 256, args.num_samples), sampler=args.sampler,
      num_steps=args.num_steps, image=guide, mask=mask, strength=args.strength,
      threshold=args.dynamic_threshold,
      labels=None if tokens is not None else parse_labels(
          args.labels, num_classes=config.model.num_classes, num_samples=args.num_samples),
      tokens=tokens,
      guidance_scale=config.sample.guidance_scale if args.guidance_scale is None
      else args.guidance_scale,
      clip_denoised=config.sample.clip_denoised and not args.no_clip,
      options=tuple(options.items()))
