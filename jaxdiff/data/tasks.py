"""Image-to-image tasks as data transforms: the degraded input a conditional model sees.

A `Task` turns a clean training image x ([H, W, C] floats in [-1, 1]) into its condition
(the "input" of the task), drawn with a NumPy generator:

- "super_resolution" (SR3, Saharia et al. 2021): x downsampled by `factor` with "area" (the
  mean of each factor x factor block, `jaxdiff.resampling.area_downsample`) or "bicubic"
  (Pillow's bicubic filter on float images, antialiased: its support grows with the
  factor); the condition is [H / f, W / f, C] and the U-Net resizes it to H x W itself.
- "colorization" (Palette, Saharia et al. 2022): the luminance Y = 0.299 R + 0.587 G +
  0.114 B (ITU-R BT.601, the weights of Pillow's "L" conversion), [H, W, 1].
- "inpainting": a "box" mask (one rectangle, sides uniform in [H / 4, H / 2]) or a
  "free_form" mask (2 to 4 brush strokes of 4 to 8 segments, as DeepFill v2's free-form
  masks, Yu et al. 2019); "uncropping": a band of the image on one random side, half
  ("half") or a quarter ("quarter") of its width or height. The condition of both is the
  masked image (missing pixels set to 0) with the mask as one more channel (+1 known, -1
  missing), [H, W, C + 1]; `known_and_mask` splits it again.
- "jpeg_restoration": a Pillow JPEG round trip of the uint8 image at a quality drawn
  uniformly from `jpeg_quality` = (lo, hi), [H, W, C].

Noise-conditioning augmentation (Ho et al. 2022, CDM, Sec. 4.1) applies to any task: the
condition c becomes cos(pi s / 2) c + sin(pi s / 2) eps at a level s in [0, 1] (a
variance-preserving cosine path: s = 0 is c, s = 1 pure noise), s ~ U(0, `augment_max`) in
training and fixed at sampling; the model sees s. Condition dropout replaces the condition
by zeros (the null condition, with s = 0) with probability `condition_dropout`, so that
classifier-free guidance (`jaxdiff.samplers.classifier_free_guidance` with null = zeros)
works on the image condition.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Optional

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from jaxdiff import images as images_lib
from jaxdiff import resampling

TASKS = ("super_resolution", "colorization", "inpainting", "uncropping", "jpeg_restoration")
DOWNSAMPLERS = ("area", "bicubic")
MASKS = ("box", "free_form")
UNCROPS = ("half", "quarter")
MASKED_TASKS = ("inpainting", "uncropping")
LUMA = np.array([0.299, 0.587, 0.114])


def bicubic_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Images [B, H, W, C] resized to ``size`` = (h, w) with Pillow's bicubic filter, channel by
  channel on float32 ("F" mode: no rounding to uint8)."""
  out = np.empty((images.shape[0],) + tuple(size) + images.shape[3:], np.float32)
  for b in range(images.shape[0]):
    for c in range(images.shape[3]):
      pil = Image.fromarray(np.asarray(images[b, ..., c], np.float32), mode="F")
      out[b, ..., c] = np.asarray(pil.resize(size[::-1], Image.Resampling.BICUBIC))
  return out


def downsample(images: np.ndarray, factor: int, method: str) -> np.ndarray:
  """[B, H / f, W / f, C] by "area" (block means) or "bicubic" (Pillow, antialiased)."""
  resampling.check_factor(images.shape, factor)
  if method == "area":
    return resampling.area_downsample(np.asarray(images, np.float32), factor)
  if method == "bicubic":
    return bicubic_resize(images, (images.shape[1] // factor, images.shape[2] // factor))
  raise ValueError(f"downsampling method {method!r} is not one of {DOWNSAMPLERS}")


def luminance(images: np.ndarray) -> np.ndarray:
  """[..., 1]: Y = 0.299 R + 0.587 G + 0.114 B of RGB images (ITU-R BT.601); the weights sum
  to 1, so the map commutes with the [-1, 1] scaling."""
  return (np.asarray(images, np.float32) @ LUMA.astype(np.float32))[..., None]


def box_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  """bool [H, W], False inside one rectangle whose sides are uniform in [side / 4, side / 2]."""
  height, width = size
  h = int(rng.integers(max(1, height // 4), max(1, height // 2) + 1))
  w = int(rng.integers(max(1, width // 4), max(1, width // 2) + 1))
  top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
  mask = np.ones(size, bool)
  mask[top:top + h, left:left + w] = False
  return mask


def free_form_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  """bool [H, W], False under 2 to 4 random brush strokes (Yu et al. 2019, free-form masks):
  each a polyline of 4 to 8 segments of length up to side / 3, width side / 12 to side / 6."""
  height, width = size
  side = min(height, width)
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(2, 5))):
    brush = int(rng.integers(max(1, side // 12), max(2, side // 6) + 1))
    x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    for _ in range(int(rng.integers(4, 9))):
      angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(1, max(2, side / 3))
      nx = float(np.clip(x + length * np.cos(angle), 0, width - 1))
      ny = float(np.clip(y + length * np.sin(angle), 0, height - 1))
      draw.line([(x, y), (nx, ny)], fill=255, width=brush)
      draw.ellipse([nx - brush / 2, ny - brush / 2, nx + brush / 2, ny + brush / 2], fill=255)
      x, y = nx, ny
  return np.asarray(canvas) == 0


def uncrop_mask(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
  """bool [H, W], False on a band of one random side: half or a quarter of the image."""
  fraction = {"half": 2, "quarter": 4}[kind]
  height, width = size
  mask = np.ones(size, bool)
  side = int(rng.integers(4))
  band_h, band_w = height // fraction, width // fraction
  region = ((slice(0, band_h), slice(None)), (slice(height - band_h, None), slice(None)),
            (slice(None), slice(0, band_w)), (slice(None), slice(width - band_w, None)))[side]
  mask[region] = False
  return mask


def masked_condition(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """[H, W, C + 1]: the image with missing pixels set to 0, and the mask (+1 known, -1
  missing) as the last channel."""
  known = np.where(mask[..., None], image, 0.0)
  return np.concatenate([known, np.where(mask, 1.0, -1.0)[..., None]], -1).astype(np.float32)


def known_and_mask(condition: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(known pixels [..., C], bool mask [..., 1], True = known) of a masked condition."""
  return condition[..., :-1], condition[..., -1:] > 0


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
  """[H, W, C] in [-1, 1]: the image as uint8, encoded by Pillow as JPEG at ``quality`` and
  decoded (the exact Pillow round trip)."""
  levels = images_lib.to_uint8(image)
  pil = Image.fromarray(levels[..., 0] if levels.shape[-1] == 1 else levels)
  buffer = io.BytesIO()
  pil.save(buffer, format="JPEG", quality=int(quality))
  buffer.seek(0)
  with Image.open(buffer) as decoded:
    out = np.asarray(decoded.convert(pil.mode))
  return images_lib.from_uint8(out.reshape(levels.shape))


def noise_augment(condition: np.ndarray, level: np.ndarray, noise: np.ndarray) -> np.ndarray:
  """cos(pi s / 2) c + sin(pi s / 2) eps, s = ``level`` [B] (CDM's augmentation, Ho et al.
  2022, Sec. 4.1, on a variance-preserving cosine path)."""
  s = np.asarray(level, np.float32).reshape((-1,) + (1,) * (condition.ndim - 1))
  return (np.cos(0.5 * np.pi * s) * condition + np.sin(0.5 * np.pi * s) * noise).astype(
      np.float32)


@dataclasses.dataclass(frozen=True)
class Task:
  """A task of `TASKS` with its options (the fields of ``config.data.task``)."""

  name: str
  factor: int = 4
  downsample: str = "area"
  mask: str = "box"
  uncrop: str = "half"
  jpeg_quality: tuple[int, int] = (5, 30)
  augment_max: float = 0.0
  condition_dropout: float = 0.0

  def check(self, image_shape: tuple[int, int, int]) -> None:
    """Raises ValueError (one line) when the task or its options do not fit images of
    ``image_shape`` (H, W, C)."""
    height, width, channels = image_shape
    choices = {"name": TASKS, "downsample": DOWNSAMPLERS, "mask": MASKS, "uncrop": UNCROPS}
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(f"config.data.task.{field}={getattr(self, field)!r} is not one of "
                         f"{allowed}")
    if self.name == "super_resolution" and (self.factor < 2 or height % self.factor
                                            or width % self.factor):
      raise ValueError(f"config.data.task.factor={self.factor} must be >= 2 and divide the "
                       f"{height}x{width} images of config.data.image_size")
    if self.name == "colorization" and channels != 3:
      raise ValueError(f"task 'colorization' needs RGB data (config.data.channels=3), but the "
                       f"dataset has {channels} channel(s)")
    lo, hi = self.jpeg_quality
    if not 1 <= lo <= hi <= 100:
      raise ValueError(f"config.data.task.jpeg_quality={tuple(self.jpeg_quality)}; expected "
                       "1 <= lo <= hi <= 100")
    for field in ("augment_max", "condition_dropout"):
      if not 0.0 <= getattr(self, field) <= 1.0:
        raise ValueError(f"config.data.task.{field}={getattr(self, field)}; expected [0, 1]")

  def condition_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(h, w, c) of the condition of an image of ``image_shape``."""
    height, width, channels = image_shape
    if self.name == "super_resolution":
      return (height // self.factor, width // self.factor, channels)
    if self.name == "colorization":
      return (height, width, 1)
    if self.name in MASKED_TASKS:
      return (height, width, channels + 1)
    return image_shape

  def mask_for(self, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A mask of the inpainting or uncropping task."""
    if self.name == "uncropping":
      return uncrop_mask(rng, size, self.uncrop)
    return box_mask(rng, size) if self.mask == "box" else free_form_mask(rng, size)

  def degrade(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The condition of one clean image [H, W, C] (float32, see the module docstring)."""
    if self.name == "super_resolution":
      return downsample(image[None], self.factor, self.downsample)[0]
    if self.name == "colorization":
      return luminance(image)
    if self.name in MASKED_TASKS:
      return masked_condition(image, self.mask_for(rng, image.shape[:2]))
    return jpeg_round_trip(image, int(rng.integers(self.jpeg_quality[0],
                                                   self.jpeg_quality[1] + 1)))

  def training_pair(self, image: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.float32]:
    """(condition, augmentation level) of one training image: degraded, then noised at
    s ~ U(0, augment_max), then dropped to the null condition (zeros, s = 0) with
    probability condition_dropout."""
    condition = self.degrade(image, rng)
    level = np.float32(rng.uniform(0.0, self.augment_max))
    condition = noise_augment(condition[None], level[None],
                              rng.standard_normal(condition.shape)[None])[0]
    if rng.uniform() < self.condition_dropout:
      return np.zeros_like(condition), np.float32(0.0)
    return condition, level

  def display(self, condition: np.ndarray, channels: int) -> np.ndarray:
    """Conditions [N, h, w, c] as images [N, h, w, channels] for grids: the known pixels of a
    masked condition, the luminance repeated to RGB."""
    shown = known_and_mask(condition)[0] if self.name in MASKED_TASKS else (
        condition)
    return np.broadcast_to(shown, shown.shape[:-1] + (channels,)) if shown.shape[-1] == 1 else (
        shown)


def task_from_config(data_config: ml_collections.ConfigDict) -> Optional[Task]:
  """The `Task` of ``config.data.task`` (None when its name is None: an unconditional run)."""
  section = data_config.task
  if section.name is None:
    return None
  fields = {f.name for f in dataclasses.fields(Task)}
  values = {key: section[key] for key in fields}
  values["jpeg_quality"] = tuple(values["jpeg_quality"])
  return Task(**values)
