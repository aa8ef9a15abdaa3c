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
from jaxdiff.data import tasks, words
from jaxdiff.discrete import levels
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


def _read_conditions(path: str, task: tasks.Task, image_shape: tuple[int, int, int],
                     mask_path: str | None) -> np.ndarray:
  """Conditions [N, h, w, c] in [-1, 1] from an .npz ("conditions" or "images": uint8, or
  floats in [-1, 1]; never unpickled) or an image file (with --mask for a masked task)."""
  if not os.path.isfile(path):
    raise CliError(f"--condition: no file at {path!r}")
  height, width, channels = task.condition_shape(image_shape)
  masked = task.name in tasks.MASKED_TASKS
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      key = "conditions" if "conditions" in data else "images"
      if key not in data:
        raise CliError(f"--condition {path!r} holds no 'conditions' or 'images' array")
      array = data[key]
    array = images.from_uint8(array) if array.dtype == np.uint8 else array.astype(np.float32)
  else:
    if masked and mask_path is None:
      raise CliError(f"--condition {path!r} of the {task.name} task needs --mask (white = known)")
    array = images.from_uint8(images.load_png(path, channels=channels - masked))
    if masked:
      mask = images.load_png(mask_path, channels=1)[..., 0] >= 128
      if mask.shape != array.shape[:2]:
        raise CliError(f"--mask is {mask.shape[0]}x{mask.shape[1]}; expected "
                       f"{array.shape[0]}x{array.shape[1]} like --condition")
      array = tasks.masked_condition(array, mask)
  array = array[None] if array.ndim == 3 else array
  if array.ndim != 4 or array.shape[1:] != (height, width, channels):
    raise CliError(f"--condition {path!r} holds conditions of shape {array.shape[1:]}; the "
                   f"{task.name} task of this run expects {height}x{width}x{channels}")
  return array


def conditions_and_references(args: argparse.Namespace, config: ml_collections.ConfigDict
                              ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """An image-to-image run's conditions (--condition, else the first --num_samples images of
  the test split degraded by the task) and the references (the clean test images; None for
  --condition); (None, None) for any other run."""
  task = tasks.task_from_config(config.data)
  if task is None:
    if args.condition is not None:
      raise CliError("--condition needs an image-to-image run (config.data.task.name is None)")
    return None, None
  if args.reference is not None:
    raise CliError("--reference (ILVR) guides unconditional runs; this one has the task "
                   f"{task.name!r}: give --condition")
  if args.condition is not None:
    return _read_conditions(args.condition, task, builders.image_shape(config), args.mask), None
  try:
    return generation.test_conditions(config, args.num_samples)
  except (OSError, ValueError) as e:
    raise CliError(f"test conditions of {config.data.name!r}: {e}") from None


def load_cascade(args: argparse.Namespace, mesh: Any, config: ml_collections.ConfigDict,
                 model: Any, params: Any) -> list[tuple[ml_collections.ConfigDict, Any, Any]]:
  """The stages (config, model, params) of --workdir and then --cascade's workdirs, checked
  to chain (`generation.check_cascade`) before anything compiles."""
  stages = [(config, model, params)]
  for workdir in args.cascade or ():
    stage_config, restored = load_run(workdir, step=None, mesh=mesh)
    params = restored.state.ema_params if args.ema else restored.state.params
    stages.append((stage_config, builders.build_model(stage_config), params))
  try:
    generation.check_cascade([stage[0] for stage in stages])
  except ValueError as e:
    raise CliError(f"--cascade: {e}") from None
  return stages


def write_samples(stem: str, samples: np.ndarray, request: generation.Request,
                  config: ml_collections.ConfigDict, *, references: np.ndarray | None,
                  rows: int | None) -> tuple[str, str]:
  """Writes stem.png (stem.txt of words for a word-list run) and stem.npz ("images" uint8,
  "labels"; for a conditioned run also the "inputs" and "references" (and for a masked task
  the "masks", uint8 1 = known) and a PNG of input | output | reference rows); returns the
  two paths."""
  outputs = images.to_uint8(samples)
  extra, columns = {}, [outputs]
  if request.conditions is not None:
    task = tasks.task_from_config(config.data)
    shown = np.resize(request.conditions, (len(samples),) + request.conditions.shape[1:])
    extra["inputs"] = images.to_uint8(task.display(shown, samples.shape[-1]) if task else shown)
    if task is not None and task.name in tasks.MASKED_TASKS:
      extra["masks"] = tasks.known_and_mask(shown)[1].astype(np.uint8)
    columns = [extra["inputs"], outputs]
  if references is not None:
    extra["references"] = images.to_uint8(references)
    columns.append(extra["references"])
  grid = outputs if len(columns) == 1 else images.side_by_side(columns)
  shown_path, npz_path = stem + ".png", stem + ".npz"
  if config.data.source == "words":
    shown_path = stem + ".txt"
    _write_words(shown_path, outputs)
  else:
    images.save_grid(shown_path, grid, rows=rows)
  images.save_npz(npz_path, outputs, labels=request.labels, extra=extra)
  return shown_path, npz_path


def _write_words(path: str, samples: np.ndarray) -> None:
  """The words of a word-list run's uint8 samples, one a line (a malformed sample as its
  letters with "." for the end token)."""
  with open(path, "w") as f:
    f.writelines(line + "\n" for line in words.render(
        np.asarray(levels.uint8_to_tokens(samples, words.NUM_TOKENS))))


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


def sampling_request(args: argparse.Namespace, config: ml_collections.ConfigDict,
                     conditions: np.ndarray | None = None, *,
                     augmented: list[ml_collections.ConfigDict] | None = None
                     ) -> generation.Request:
  """The generation request of sample.py's command line over config.sample's defaults (with
  an image-to-image run's `conditions`), checked (missing inputs, options the sampler
  cannot run) before anything compiles. `augmented`: the configs that --aug_level applies
  to (a cascade's super-resolution stages; default: `config`)."""
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
  augmented = [config] if augmented is None else augmented
  if args.aug_level is not None and not all(c.model.get("aug_level_embedding")
                                            for c in augmented):
    raise CliError("--aug_level needs a model trained with noise-conditioning augmentation "
                   "(config.model.aug_level_embedding)")
  if (args.reference is None) != (args.ilvr_factor is None):
    raise CliError("ILVR needs both --reference (an image) and --ilvr_factor (N)")
  try:
    sampling.check_fits(args.sampler, config, num_steps=args.num_steps,
                        **{k: v for k, v in options.items() if k == "eta"})
  except ValueError as e:
    raise CliError(f"--sampler {args.sampler}: {e}") from None
  image_shape = builders.image_shape(config)
  guide, mask = load_guide(args.image, None if conditions is not None else args.mask,
                           image_shape)
  reference = None if args.reference is None else images.from_uint8(_load_image(
      args.reference, "--reference", channels=image_shape[2], size=image_shape[:2]))
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
      options=tuple(options.items()), conditions=conditions,
      aug_level=config.sample.aug_level if args.aug_level is None else args.aug_level,
      reference=reference, ilvr_factor=args.ilvr_factor)
