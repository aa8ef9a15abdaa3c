"""Evaluation of a trained model: sample quality (FID, IS, classifier-feature distance) and
test-set bits/dim, for `python -m jaxdiff.evaluate` and for periodic use during training.

Metric names: "bpd" (the variational bound, `jaxdiff.evaluation.bpd`), "fid" (FID and
Inception Score with the FID InceptionV3, Heusel et al. 2017 / Salimans et al. 2016; needs
a local weights file), "classifier_fd" (the Frechet distance in the features of a small
classifier trained on the data set, `jaxdiff.evaluation.classifier`) and "words" (samples
of a word-list run against the list and n-gram baselines, `jaxdiff.evaluation.words`). Reference statistics
and the classifier are cached under `cache_dir` (default $JAXDIFF_CACHE or
~/.cache/jaxdiff), keyed by data set, resolution and the weights they were computed with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxdiff import images
from jaxdiff.config import builders, categorical, objectives
from jaxdiff.data import ArraySource, tasks
from jaxdiff.data import words as word_data
from jaxdiff.discrete import levels
from jaxdiff.evaluation import bpd as bpd_lib
from jaxdiff.evaluation import METRICS, frechet, inception, restoration
from jaxdiff.evaluation.classifier import TrainedClassifier, load_or_train_classifier
from jaxdiff.evaluation.datasets import load_images
from jaxdiff.evaluation.inception_score import inception_score
from jaxdiff.evaluation.words import bigram_words, unigram_words, word_statistics
from jaxdiff.job import generation, latents, runtime

# The metrics of `python -m jaxdiff.evaluate`: METRICS (also for config.eval during training),
# "restoration" (a sample.py .npz of an image-to-image run), "reconstruction" (an
# autoencoder run's PSNR and latent statistics) and "prompt_accuracy" (how often a
# classifier trained on the data recognizes the class a sample was asked for).
TOOL_METRICS = METRICS + ("restoration", "reconstruction", "prompt_accuracy")


def default_cache_dir() -> str:
  """jaxdiff's cache folder: $JAXDIFF_CACHE, else $XDG_CACHE_HOME/jaxdiff, else
  ~/.cache/jaxdiff."""
  return runtime.cache_root()


def _dataset_tag(data_config: ml_collections.ConfigDict, split: str) -> str:
  """A file-name-safe tag of a data set split at its training resolution."""
  size, channels = data_config.image_size, data_config.channels
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{data_config.name}_{split}_{size}x{size}x{channels}")


@dataclasses.dataclass(frozen=True)
class ClassifierReference:
  """The feature classifier of a data set and the feature statistics of its real images."""
  classifier: TrainedClassifier
  stats: frechet.FeatureStatistics


def classifier_reference(data_config: ml_collections.ConfigDict, *, cache_dir: str,
                         split: Optional[str] = None, num_steps: int = 800
                         ) -> ClassifierReference:
  """Trains (or loads from the cache) the classifier on a labelled data split and returns it
  with the statistics of that split's features (also cached)."""
  split = split or data_config.split
  images, labels = load_images(data_config, split=split)
  if labels is None:
    raise ValueError(f"classifier_fd needs a labelled data set; {data_config.name!r} split "
                     f"{split!r} has no labels")
  tag = _dataset_tag(data_config, split)
  classifier = load_or_train_classifier(
      os.path.join(cache_dir, f"classifier_{tag}.msgpack"), images, labels,
      num_classes=int(labels.max()) + 1, num_steps=num_steps)
  stats = frechet.cached_statistics(
      os.path.join(cache_dir, f"classifier_stats_{tag}_{classifier.fingerprint[:16]}.npz"),
      lambda: classifier.features(images))
  return ClassifierReference(classifier=classifier, stats=stats)


def classifier_frechet_distance(reference: ClassifierReference, images: np.ndarray) -> float:
  """Frechet distance between classifier features of `images` (in [-1, 1]) and the data."""
  return frechet.frechet_distance_from_stats(
      frechet.feature_statistics(reference.classifier.features(images)), reference.stats)


@dataclasses.dataclass(frozen=True)
class InceptionReference:
  """FID Inception variables and the pool-feature statistics of a data split."""
  variables: Any
  stats: frechet.FeatureStatistics


def _file_digest(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def inception_reference(data_config: ml_collections.ConfigDict, *, weights_path: str,
                        cache_dir: str, split: Optional[str] = None,
                        batch_size: int = 100) -> InceptionReference:
  """Loads the FID Inception weights and the data split's (cached) pool statistics."""
  split = split or data_config.split
  variables = inception.load_inception_variables(weights_path)
  tag = _dataset_tag(data_config, split)

  def features() -> np.ndarray:
    return inception.inception_outputs(variables, load_images(data_config, split=split)[0],
                                       batch_size=batch_size)[0]

  stats = frechet.cached_statistics(
      os.path.join(cache_dir, f"inception_stats_{tag}_{_file_digest(weights_path)[:16]}.npz"),
      features)
  return InceptionReference(variables=variables, stats=stats)


def fid_and_inception_score(reference: InceptionReference, images: np.ndarray, *,
                            batch_size: int = 100) -> dict[str, float]:
  """{"fid", "inception_score", "inception_score_std"} of `images` [N, H, W, C] in [-1, 1]."""
  pool, logits = inception.inception_outputs(reference.variables, images,
                                             batch_size=batch_size)
  score, score_std = inception_score(logits, num_splits=min(10, len(images)))
  return {"fid": frechet.frechet_distance_from_stats(frechet.feature_statistics(pool),
                                                     reference.stats),
          "inception_score": score, "inception_score_std": score_std}


def generate_samples(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                     key: jax.Array, *, num_samples: int, batch_size: int,
                     mesh: Optional[jax.sharding.Mesh] = None,
                     process: Any = None) -> np.ndarray:
  """`num_samples` images [N, H, W, C] in [-1, 1] with `config.sample`'s sampler from the one
  generation path (`generation.sample_batches`: sample.py with the same seed and batch size
  draws the same images), quantized to 8 bits as saved samples are."""
  if num_samples < 1 or batch_size < 1:
    raise ValueError(f"generate_samples: num_samples and batch_size must be >= 1, got "
                     f"{num_samples} and {batch_size}")
  request = generation.request_from_config(config, num_samples=num_samples,
                                           batch_size=batch_size)
  samples = generation.sample_batches(config, model, params, key, request, mesh=mesh,
                                      process=process)
  return images.from_uint8(images.to_uint8(samples))


def evaluate_bpd(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                 rng: jax.Array, *, split: Optional[str] = None,
                 max_examples: Optional[int] = None, batch_size: int = 64,
                 mesh: Optional[jax.sharding.Mesh] = None, on_batch: Optional[Any] = None,
                 schedule: Any = None) -> bpd_lib.BpdResult:
  """`bpd.dataset_bpd` of a data split under `model` with `params` (unconditional call), on
  the run's schedule or the given one (an imported model's); for a discrete objective
  `categorical.dataset_bpd` (the images' levels checked first)."""
  real, _ = load_images(config.data, split=split, max_examples=max_examples)
  if categorical.is_categorical(config):
    categorical.check_data(config, ArraySource(images.to_uint8(real)), every_level=False)
    return categorical.dataset_bpd(config, model.apply, {"params": params}, real, rng=rng,
                                   batch_size=batch_size, mesh=mesh, on_batch=on_batch)
  schedule = objectives.schedule_from_config(config.diffusion) if schedule is None else schedule
  return bpd_lib.dataset_bpd(
      model.apply, {"params": params}, schedule,
      real, rng=rng, batch_size=batch_size, mesh=mesh, on_batch=on_batch,
      prediction=config.diffusion.prediction, variance=config.diffusion.variance)


def word_metrics(config: ml_collections.ConfigDict, samples: np.ndarray, *,
                 seed: int = 0) -> dict[str, float]:
  """"words_*" statistics (`word_statistics`) of samples [N, H, W, C] in [-1, 1] of a
  word-list run, against the run's word list (every word that fits, as the vocabulary) and
  its training split; "words_unigram_in_list" / "words_bigram_in_list": the same share for
  as many words of the training words' unigram and bigram baselines (seeded)."""
  length = config.data.image_size ** 2 * config.data.channels
  vocabulary = word_data.read_words(config.data.word_list, max_length=length)
  train = [w for w in vocabulary if word_data.in_split(w, "train")]
  generated = word_data.decode(np.asarray(levels.images_to_tokens(samples,
                                                                  word_data.NUM_TOKENS)))
  results = {f"words_{k}": v for k, v in word_statistics(generated, vocabulary, train).items()}
  for name, baseline in (("unigram", unigram_words), ("bigram", bigram_words)):
    drawn = baseline(train, len(generated), seed=seed, max_length=length)
    results[f"words_{name}_in_list"] = word_statistics(drawn, vocabulary, train)["in_list"]
  return results


def evaluate_during_training(config: ml_collections.ConfigDict, model: nn.Module,
                             params: Any, rng: jax.Array, *, metrics: Sequence[str],
                             num_samples: int = 256, sample_batch_size: int = 256,
                             bpd_split: Optional[str] = "test", bpd_examples: int = 256,
                             inception_weights: Optional[str] = None,
                             cache_dir: Optional[str] = None) -> dict[str, float]:
  """Scalars of the requested `metrics` (subset of METRICS) for logging during training.

  "bpd": "bpd" and "bpd_stderr" on the first `bpd_examples` images of `bpd_split`
  (default the held-out "test"; None = config.data.split). "classifier_fd": on
  `num_samples` samples (EMA params recommended). "fid": "fid", "inception_score",
  "inception_score_std" on the same samples; needs `inception_weights`. References are
  cached in `cache_dir`, so only the first call trains the classifier or computes data
  statistics.
  """
  unknown = sorted(set(metrics) - set(METRICS))
  if unknown:
    raise ValueError(f"unknown evaluation metrics {unknown}; expected some of {METRICS}")
  if "fid" in metrics and not inception_weights:
    raise ValueError("metric 'fid' needs inception_weights, the .npz of the FID Inception "
                     "weights (see jaxdiff.evaluation.inception)")
  cache_dir = cache_dir or default_cache_dir()
  bpd_key, sample_key = jax.random.fold_in(rng, 1), rng
  results: dict[str, float] = {}
  if "bpd" in metrics:
    result = evaluate_bpd(config, model, params, bpd_key, split=bpd_split,
                          max_examples=bpd_examples)
    results.update(bpd=result.bpd, bpd_stderr=result.stderr)
  if {"classifier_fd", "fid", "words"} & set(metrics):
    samples = generate_samples(config, model, params, sample_key, num_samples=num_samples,
                               batch_size=min(sample_batch_size, num_samples))
    if "words" in metrics:
      results.update(word_metrics(config, samples))
    if "classifier_fd" in metrics:
      reference = classifier_reference(config.data, cache_dir=cache_dir)
      results["classifier_fd"] = classifier_frechet_distance(reference, samples)
    if "fid" in metrics:
      reference = inception_reference(config.data, weights_path=inception_weights,
                                      cache_dir=cache_dir)
      results.update(fid_and_inception_score(reference, samples))
  return results


def reconstruction_metrics(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                           key: jax.Array, *, split: Optional[str] = "test",
                           max_examples: int = 1000, batch_size: int = 256,
                           reference: Optional[ClassifierReference] = None) -> dict[str, Any]:
  """An autoencoder run's mean PSNR (dB, 8-bit reconstructions of the posterior mean) on the
  first `max_examples` images of `split`, and the statistics of their unscaled latents.

  With a classifier `reference`, also the classifier Frechet distance of the reconstructions
  ("reconstruction_classifier_fd", Rombach et al. 2022's rFID in the classifier's features)
  and of the same real images ("data_classifier_fd", its floor at this sample size).
  """
  data_images, _ = load_images(config.data, split=split, max_examples=max_examples)
  apply = jax.jit(model.apply)
  recon = np.concatenate([np.asarray(apply({"params": params}, data_images[i:i + batch_size]))
                          for i in range(0, len(data_images), batch_size)])
  recon = images.from_uint8(images.to_uint8(recon))
  values = restoration.psnr(recon, data_images)
  coder = latents.LatentCoder(params=params["autoencoder"], scale_factor=np.float32(1.0),
                              autoencoder=model.autoencoder,
                              sample_posterior=config.autoencoder.sample_posterior)
  stats = latents.latent_statistics(coder, data_images, key=key, batch_size=batch_size)
  distances = {} if reference is None else {
      "reconstruction_classifier_fd": classifier_frechet_distance(reference, recon),
      "data_classifier_fd": classifier_frechet_distance(reference, data_images)}
  return {**distances, "psnr": float(values.mean()),
          "psnr_stderr": float(values.std() / np.sqrt(len(values))),
          "reconstruction_examples": len(values),
          **{f"latent_{name}": value for name, value in stats.items()}}


def prompt_accuracy(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                    key: jax.Array, reference: ClassifierReference, *, num_samples: int,
                    batch_size: int, guidance_scale: float,
                    mesh: Optional[jax.sharding.Mesh] = None) -> float:
  """Share of `num_samples` samples, asked for classes 0, 1, ..., K - 1 in turn (by label, or
  for a caption model by the bare class name as prompt), that the data's classifier
  (`reference.classifier`, trained on real images only) assigns to the class asked for."""
  num_classes = reference.classifier.num_classes
  wanted = generation.cycled_labels(num_classes, num_samples)
  tokens = generation.class_captions(config, num_samples)
  if tokens is None and config.model.get("num_classes") is None:
    raise ValueError("prompt_accuracy needs a conditional model (class labels or captions)")
  request = generation.request_from_config(
      config, num_samples=num_samples, batch_size=batch_size, guidance_scale=guidance_scale,
      labels=None if tokens is not None else wanted, tokens=tokens)
  samples = generation.sample_batches(config, model, params, key, request, mesh=mesh)
  predicted = reference.classifier.predict(images.from_uint8(images.to_uint8(samples)))
  return float(np.mean(predicted == wanted))


def restoration_baseline(config: ml_collections.ConfigDict, inputs: np.ndarray, *,
                         known: np.ndarray | None = None) -> np.ndarray:
  """The trivial baseline of an image-to-image run's inputs (as sample.py saves them,
  `Task.display`), [N, H, W, C] in [-1, 1]: Pillow bicubic upsampling for
  super-resolution, the hole filled by harmonic interpolation (`restoration.harmonic_fill`,
  needs the masks `known`, bool [N, H, W, 1]) for inpainting and uncropping, the inputs
  themselves otherwise (the gray image, the JPEG)."""
  task = tasks.task_from_config(config.data)
  if task is None:
    raise ValueError("restoration needs an image-to-image run (config.data.task.name is None)")
  if task.name == "super_resolution":
    return tasks.bicubic_resize(inputs, builders.image_shape(config)[:2])
  if task.name in tasks.MASKED_TASKS:
    if known is None:
      raise ValueError(f"the {task.name} task is scored with its masks; this .npz has none "
                       "(write it again with sample.py)")
    return restoration.harmonic_fill(inputs, known)
  return inputs


def restoration_metrics(config: ml_collections.ConfigDict, outputs: np.ndarray,
                        inputs: np.ndarray, references: np.ndarray, *,
                        known: np.ndarray | None = None,
                        baseline: np.ndarray | None = None) -> dict[str, float]:
  """PSNR and SSIM (`jaxdiff.evaluation.restoration`; for area super-resolution also the
  consistency error, Saharia et al. 2021; for inpainting and uncropping also the hole PSNR)
  of an image-to-image run's outputs against the references, beside those of the trivial
  baseline (`restoration_baseline`, unless given; keys prefixed "baseline_"). Arrays in
  [-1, 1]."""
  if baseline is None:
    baseline = restoration_baseline(config, inputs, known=known)
  task = tasks.task_from_config(config.data)
  factor = task.factor if task.name == "super_resolution" and task.downsample == "area" else (
      None)
  known = known if task.name in tasks.MASKED_TASKS else None
  model = restoration.summary(outputs, references, inputs=inputs, factor=factor, known=known)
  floor = restoration.summary(baseline, references, inputs=inputs, factor=factor, known=known)
  return {**model, **{f"baseline_{name}": value for name, value in floor.items()}}
