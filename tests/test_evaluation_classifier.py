"""The feature classifier and its Frechet distance on scikit-learn's digits (8x8)."""

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdiff import samplers, schedules
from jaxdiff.evaluation import classifier, frechet


@pytest.fixture(scope="module")
def digits():
  """Digits in [-1, 1] [1797, 8, 8, 1] and a fixed split: classifier / reference / held-out."""
  data = load_digits()
  images = (np.round(data.images * 255 / 16) / 127.5 - 1.0).astype(np.float32)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  return images, data.target, order[:897], order[897:1347], order[1347:]


@pytest.fixture(scope="module")
def trained(digits):
  images, labels, train_idx, _, _ = digits
  return classifier.train_classifier(images[train_idx], labels[train_idx], num_classes=10,
                                     num_steps=400)


def _distance(model, a, b):
  return frechet.frechet_distance_from_stats(frechet.feature_statistics(model.features(a)),
                                             frechet.feature_statistics(model.features(b)))


def test_distance_ranks_held_out_data_far_closer_than_untrained_samples(digits, trained):
  images, labels, _, ref_idx, held_idx = digits
  accuracy = np.mean(trained.predict(images[held_idx]) == labels[held_idx])
  assert accuracy > 0.85, accuracy
  # An untrained jaxdiff UNet outputs exactly 0 (its conv_out is zero-initialized), so its
  # samples are those of the eps = 0 model.
  schedule = schedules.make_schedule("linear", 1000)
  untrained = samplers.ddpm(lambda x, t: jax.numpy.zeros_like(x), schedule,
                            jax.random.PRNGKey(0), (450, 8, 8, 1), num_steps=100)
  real = _distance(trained, images[held_idx], images[ref_idx])
  fake = _distance(trained, np.asarray(untrained), images[ref_idx])
  assert real < 0.05 * fake, (real, fake)
  features = trained.features(images[:5])
  assert features.shape == (5, classifier.FEATURE_DIM) and features.dtype == np.float64


def test_cache_is_reused_only_for_the_same_data(tmp_path, monkeypatch, digits):
  images, labels, train_idx, _, _ = digits
  x, y = images[train_idx[:64]], labels[train_idx[:64]]
  path = str(tmp_path / "clf.msgpack")
  first = classifier.load_or_train_classifier(path, x, y, num_classes=10, num_steps=3)

  def no_training(*args, **kwargs):
    raise AssertionError("retrained although the cache matches")

  with monkeypatch.context() as m:
    m.setattr(classifier, "train_classifier", no_training)
    again = classifier.load_or_train_classifier(path, x, y, num_classes=10, num_steps=3)
  jax.tree.map(np.testing.assert_array_equal, first.params, again.params)
  assert again.fingerprint == first.fingerprint
  other = classifier.load_or_train_classifier(path, x, (y + 1) % 10, num_classes=10,
                                              num_steps=3)
  assert other.fingerprint != first.fingerprint


def test_bad_input(trained):
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    classifier.train_classifier(np.zeros((4, 8, 8, 1)), np.array([0, 1, 2, 3]), num_classes=3)
  with pytest.raises(ValueError, match=r"expected images \[N, 8, 8, 1\], got shape"):
    trained.features(np.zeros((2, 16, 16, 1)))
