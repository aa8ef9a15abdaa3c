"""A small CNN classifier whose penultimate features measure samples of small datasets.

FID needs ImageNet Inception weights, which cannot be fetched offline, and its features
say little about 8x8 digits. For small labelled datasets (scikit-learn digits,
Fashion-MNIST) jaxdiff trains this classifier on the real data, caches it, and reports the
Frechet distance (`jaxdiff.evaluation.frechet`) between Gaussians fitted to its
penultimate-layer features of real images and of samples: the classifier-feature analogue
of FID (Heusel et al., 2017), as in the "FCD"/"classifier FID" of small-data work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from typing import Any

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.evaluation import cache
from jaxdiff.evaluation.batching import map_batches

FEATURE_DIM = 64


class FeatureClassifier(nn.Module):
  """Conv(16)-Conv(32, /2)-Conv(32)-mean pool-Dense(64) features, then Dense logits.

  Works at any resolution >= 4 and channel count; `__call__` returns (features, logits).
  """
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), name="conv2")(x))
    x = nn.relu(nn.Conv(32, (3, 3), name="conv3")(x))
    features = nn.relu(nn.Dense(FEATURE_DIM, name="features")(jnp.mean(x, axis=(1, 2))))
    return features, nn.Dense(self.num_classes, name="logits")(features)


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
  """Parameters of a trained `FeatureClassifier` and what it was trained on."""
  params: Any
  num_classes: int
  image_shape: tuple[int, int, int]
  fingerprint: str  # hash of the training images, labels and settings

  def features(self, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Penultimate features [N, 64] (float64) of images [N, H, W, C] in [-1, 1]."""
    return self._outputs(images, batch_size=batch_size)[0].astype(np.float64)

  def predict(self, images: np.ndarray, *, batch_size: int = 512) -> np.ndarray:
    """Predicted class [N] of images [N, H, W, C] in [-1, 1]."""
    return self._outputs(images, batch_size=batch_size)[1].argmax(axis=-1)

  def _outputs(self, images: np.ndarray, *, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise ValueError(f"feature classifier: expected images [N, "
                       f"{', '.join(map(str, self.image_shape))}], got shape {images.shape}")
    return map_batches(
        lambda batch, _: _apply(self.params, batch, num_classes=self.num_classes),
        images, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _apply(params: Any, images: jax.Array, *, num_classes: int
           ) -> tuple[jax.Array, jax.Array]:
  """Jitted forward pass: (features, logits)."""
  return FeatureClassifier(num_classes).apply({"params": params}, images)


def _fingerprint(images: np.ndarray, labels: np.ndarray, settings: dict[str, Any]) -> str:
  """Hash of the training data and settings, so a cache built on other data is not reused."""
  digest = hashlib.sha256()
  digest.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
  digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
  digest.update(json.dumps(settings, sort_keys=True).encode())
  return digest.hexdigest()


def train_classifier(images: np.ndarray, labels: np.ndarray, *, num_classes: int,
                     seed: int = 0, num_steps: int = 800, batch_size: int = 64,
                     learning_rate: float = 3e-3) -> TrainedClassifier:
  """Trains `FeatureClassifier` with Adam (cosine-decayed rate) on softmax cross-entropy
  over images [N, H, W, C] in [-1, 1] and int labels [N] in [0, num_classes)."""
  images = np.asarray(images, dtype=np.float32)
  labels = np.asarray(labels)
  if images.ndim != 4 or labels.shape != images.shape[:1]:
    raise ValueError(f"train_classifier: expected images [N, H, W, C] and labels [N], got "
                     f"{images.shape} and {labels.shape}")
  if num_classes < 2 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"train_classifier: labels must lie in [0, {num_classes}) with "
                     f"num_classes >= 2, got range [{labels.min()}, {labels.max()}]")
  batch_size = min(batch_size, len(images))
  settings = dict(num_classes=num_classes, seed=seed, num_steps=num_steps,
                  batch_size=batch_size, learning_rate=learning_rate)
  model = FeatureClassifier(num_classes)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + images.shape[1:]))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any]:
    def loss_fn(p: Any) -> jax.Array:
      logits = model.apply({"params": p}, x)[1]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state)
    return optax.apply_updates(params, updates), opt_state

  order = np.random.default_rng(seed)
  for _ in range(num_steps):
    idx = order.choice(len(images), batch_size, replace=False)
    params, opt_state = step(params, opt_state, images[idx], labels[idx].astype(np.int32))
  return TrainedClassifier(params=params, num_classes=num_classes,
                           image_shape=tuple(images.shape[1:]),
                           fingerprint=_fingerprint(images, labels, settings))


def load_or_train_classifier(cache_path: str, images: np.ndarray, labels: np.ndarray, *,
                             num_classes: int, seed: int = 0, num_steps: int = 800,
                             batch_size: int = 64, learning_rate: float = 3e-3
                             ) -> TrainedClassifier:
  """The classifier cached at `cache_path` if it was trained on these images, labels and
  settings; otherwise trains one (`train_classifier`) and caches it there."""
  images = np.asarray(images, dtype=np.float32)
  settings = dict(num_classes=num_classes, seed=seed, num_steps=num_steps,
                  batch_size=min(batch_size, len(images)), learning_rate=learning_rate)
  fingerprint = _fingerprint(images, np.asarray(labels), settings)
  cached = _read_cache(cache_path)
  if cached is not None and cached.get("fingerprint") == fingerprint:
    return TrainedClassifier(params=jax.tree.map(jnp.asarray, cached["params"]),
                             num_classes=num_classes, image_shape=tuple(images.shape[1:]),
                             fingerprint=fingerprint)
  classifier = train_classifier(images, labels, **settings)
  _write_cache(cache_path, {"fingerprint": classifier.fingerprint,
                            "params": jax.tree.map(np.asarray, classifier.params)})
  return classifier


def _read_cache(path: str) -> dict[str, Any] | None:
  """The cached msgpack payload at `path`; None when missing or damaged (with a warning
  naming the file)."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, "rb") as f:
      cached = flax.serialization.msgpack_restore(f.read())
    if not isinstance(cached, dict) or "params" not in cached:
      raise ValueError("no 'params' in it")
    return cached
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises many types)
    logging.warning("Damaged classifier cache %s (%s: %s); retraining it.", path,
                    type(e).__name__, e)
    return None


def _write_cache(path: str, payload: dict[str, Any]) -> None:
  """Writes the msgpack payload atomically (`cache.write_atomically`)."""
  cache.write_atomically(path, lambda f: f.write(flax.serialization.msgpack_serialize(payload)))
