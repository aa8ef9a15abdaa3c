"""Shared plumbing of the command-line tools (`sample.py`, `python -m jaxdiff.evaluate`).

User errors are raised as :class:`CliError` and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import ml_collections
import numpy as np

from jaxdiff import images, parallel
from jaxdiff.data import words
from jaxdiff.discrete import levels
from jaxdiff.job import checkpoints, generation


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
  except (FileNotFoundError, RuntimeError) as e:
    raise CliError(str(e)) from None


def check_writable_dir(path: str, *, flag: str) -> None:
  """Raises CliError unless ``path`` is (or can be created as) a writable directory, checked
  before any compute is spent."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise CliError(f"{flag} {path!r} cannot be created: {e.strerror}") from None
  if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
    raise CliError(f"{flag} {path!r} is not a writable directory")


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


def save_samples(out_dir: str, stem: str, samples: np.ndarray,
                 config: ml_collections.ConfigDict, *, labels: np.ndarray | None = None,
                 rows: int | None = None) -> tuple[str, str]:
  """Writes uint8 samples [N, H, W, C] into ``out_dir``: ``stem.npz`` ("images", and
  "labels" when given) and a PNG grid ``stem.png``, or for a word-list run
  (config.data.source "words") the words, one a line, in ``stem.txt`` (a malformed sample
  as its letters with "." for the end token). Returns (the .png or .txt path, the .npz path)."""
  npz_path = os.path.join(out_dir, stem + ".npz")
  if config.data.source == "words":
    first = os.path.join(out_dir, stem + ".txt")
    with open(first, "w") as f:
      f.writelines(line + "\n" for line in words.render(
          np.asarray(levels.uint8_to_tokens(samples, words.NUM_TOKENS))))
  else:
    first = os.path.join(out_dir, stem + ".png")
    images.save_grid(first, samples, rows=rows)
  images.save_npz(npz_path, samples, labels=labels)
  return first, npz_path
