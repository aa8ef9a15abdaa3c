"""Short captions built from what a labelled image data set has: its class names and two
attributes measured on each image, for training and prompting caption-conditioned models.

A caption is ``[size] [tone] class name``: "large dark coat", "bright sneaker", "ankle
boot". The item is the pixels brighter than 10% of full scale; its *size* is the fraction of
the image it covers and its *tone* the mean brightness of those pixels. Each is "small" /
"dark" below the first tercile of the image's class, "large" / "bright" above the second
(terciles measured on the training split, in `CAPTION_SETS`), and absent in between; in
training each attribute word is also dropped with probability 1/2, so a bare class name is
a caption of its own. Captions are word tokens of a fixed vocabulary: `PAD` (0), `BOS` (1),
then the words; every token sequence starts with `BOS`, and the empty caption is the
"no condition" of classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models.text_encoder import null_tokens

SIZES = ("small", "", "large")
TONES = ("dark", "", "bright")
_INK = 0.1  # Pixels above this fraction of full scale belong to the item.


@dataclasses.dataclass(frozen=True)
class CaptionSet:
  """The captions of one data set: class names and per-class attribute terciles [K, 2]."""

  name: str
  class_names: tuple[str, ...]
  size_terciles: tuple[tuple[float, float], ...]
  tone_terciles: tuple[tuple[float, float], ...]

  @property
  def vocabulary(self) -> tuple[str, ...]:
    """Token id -> word: "<pad>", "<bos>", then the words of every caption, sorted."""
    words = {w for name in self.class_names for w in name.split()}
    words |= {w for w in SIZES + TONES if w}
    return ("<pad>", "<bos>") + tuple(sorted(words))

  def tokenize(self, text: str, *, max_length: int) -> np.ndarray:
    """int32 [max_length]: BOS, the words' ids, PAD. Case and the punctuation .,;:!? are
    ignored; an unknown word or a caption longer than max_length is a one-line ValueError."""
    ids = {word: index for index, word in enumerate(self.vocabulary)}
    words = re.sub(r"[.,;:!?]", " ", text.lower()).split()
    unknown = [w for w in words if w not in ids or w.startswith("<")]
    if unknown:
      raise ValueError(f"unknown word {unknown[0]!r} in {text!r}; the {self.name} captions "
                       f"use: {' '.join(self.vocabulary[2:])}")
    if len(words) + 1 > max_length:
      raise ValueError(f"{text!r} has {len(words)} words; at most {max_length - 1} fit "
                       f"(max_length={max_length} tokens with BOS)")
    row = null_tokens(max_length)
    row[1:len(words) + 1] = [ids[w] for w in words]
    return row

  def table(self, *, max_length: int) -> np.ndarray:
    """int32 [K, 3, 3, max_length]: the tokens of (class, size index, tone index)."""
    return np.stack([np.stack([np.stack([
        self.tokenize(" ".join(w for w in (size, tone, name) if w), max_length=max_length)
        for tone in TONES]) for size in SIZES]) for name in self.class_names])


def _tercile_index(value: jax.Array, terciles: jax.Array) -> jax.Array:
  """0 below the first tercile, 2 above the second, 1 between."""
  return (value >= terciles[:, 0]).astype(jnp.int32) + (value > terciles[:, 1]).astype(
      jnp.int32)


def attributes(images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(size, tone) per image [B] of images [B, H, W, C] in [-1, 1] (module docstring)."""
  gray = (jnp.mean(images, axis=-1) + 1.0) / 2.0
  ink = (gray > _INK).astype(gray.dtype)
  covered = jnp.sum(ink, axis=(1, 2))
  size = covered / (gray.shape[1] * gray.shape[2])
  tone = jnp.sum(gray * ink, axis=(1, 2)) / jnp.maximum(covered, 1.0)
  return size, tone


def caption_tokens(caption_set: CaptionSet, images: jax.Array, labels: jax.Array,
                   key: jax.Array, *, max_length: int) -> jax.Array:
  """int32 [B, max_length] caption tokens of a batch (images in [-1, 1], labels [B]), each
  attribute word kept with probability 1/2 (drawn from `key`). Jittable."""
  size, tone = attributes(images)
  sizes = jnp.asarray(caption_set.size_terciles, jnp.float32)[labels]
  tones = jnp.asarray(caption_set.tone_terciles, jnp.float32)[labels]
  keep = jax.random.bernoulli(key, 0.5, (2,) + labels.shape)
  size_index = jnp.where(keep[0], _tercile_index(size, sizes), 1)
  tone_index = jnp.where(keep[1], _tercile_index(tone, tones), 1)
  table = jnp.asarray(caption_set.table(max_length=max_length))
  return table[labels, size_index, tone_index]


# Terciles per class of the training split (28x28 Fashion-MNIST; the digits' first 1500).
CAPTION_SETS = {
    "fashion_mnist": CaptionSet(
        "fashion_mnist",
        ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
         "bag", "ankle boot"),
        ((0.517, 0.566), (0.305, 0.333), (0.577, 0.643), (0.353, 0.426), (0.543, 0.602),
         (0.207, 0.284), (0.55, 0.622), (0.261, 0.305), (0.487, 0.582), (0.399, 0.466)),
        ((0.523, 0.726), (0.631, 0.751), (0.527, 0.742), (0.598, 0.761), (0.656, 0.77),
         (0.471, 0.569), (0.462, 0.689), (0.534, 0.634), (0.626, 0.729), (0.658, 0.738))),
    "digits": CaptionSet(
        "digits",
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        ((0.5, 0.53), (0.41, 0.45), (0.45, 0.48), (0.45, 0.48), (0.45, 0.48), (0.45, 0.48),
         (0.45, 0.48), (0.44, 0.48), (0.48, 0.52), (0.47, 0.52)),
        ((0.57, 0.62), (0.68, 0.72), (0.64, 0.67), (0.6, 0.65), (0.63, 0.66), (0.61, 0.66),
         (0.62, 0.66), (0.62, 0.65), (0.61, 0.66), (0.6, 0.63))),
}
