"""Categories as 8-bit levels, the word-list data, and the words metric's arithmetic."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from jaxdiff import images
from jaxdiff.data import words
from jaxdiff.discrete import levels
from jaxdiff.evaluation import words as word_eval


@pytest.mark.parametrize("k", [2, 17, 27, 256])
def test_levels_round_trip_exactly(k):
  tokens = np.arange(k)
  u = np.asarray(levels.tokens_to_uint8(tokens, k))
  np.testing.assert_array_equal(u, np.rint(tokens * 255 / (k - 1)))
  np.testing.assert_array_equal(levels.uint8_to_tokens(u, k), tokens)
  x = np.asarray(levels.tokens_to_images(tokens, k))
  np.testing.assert_array_equal(images.to_uint8(x), u)
  np.testing.assert_array_equal(levels.images_to_tokens(images.from_uint8(u), k), tokens)


def test_digit_levels_are_scikit_learns():
  """The digits' uint8 images (round(v * 255 / 16), `jaxdiff.data.digits_builder`) are
  exactly the 17 levels, token v at gray level v."""
  gray = load_digits().images.astype(np.int64)
  stored = np.round(gray * (255.0 / 16)).astype(np.uint8)
  np.testing.assert_array_equal(np.unique(stored), levels.uint8_levels(17))
  np.testing.assert_array_equal(levels.uint8_to_tokens(stored, 17), gray)


def test_quantization_rounds_to_the_nearest_level():
  u = np.arange(256, dtype=np.uint8)
  tokens = np.asarray(levels.uint8_to_tokens(u, 8))
  centres = np.arange(8) * 255 / 7           # the levels before their rounding to uint8
  nearest = np.argmin(np.abs(u[:, None] - centres[None]), axis=1)
  np.testing.assert_array_equal(tokens, nearest)
  with pytest.raises(ValueError, match="in \\[2, 256\\], got 257"):
    levels.uint8_levels(257)


def test_word_tokens_round_trip_and_malformed_rows():
  batch = words.encode(["a", "cab", "zebra"], 6)
  np.testing.assert_array_equal(batch[1], [2, 0, 1, 26, 26, 26])
  assert words.decode(batch.reshape(3, 2, 3, 1)) == ["a", "cab", "zebra"]
  bad = np.array([[0, 26, 1, 26], [26, 26, 26, 26], [0, 1, 2, 3]])
  assert words.decode(bad) == [None, None, "abcd"]
  assert words.render(bad) == ["a.b.", "....", "abcd"]
  with pytest.raises(ValueError, match="cannot encode 'toolong'"):
    words.encode(["toolong"], 4)


def test_word_list_reading_and_splits(tmp_path):
  path = tmp_path / "words"
  path.write_text("cat\nCat\ndog's\ncat\nzebra\nhippopotamus\nox\néclair\n")
  assert words.read_words(path) == ["cat", "hippopotamus", "ox", "zebra"]
  assert words.read_words(path, max_length=5) == ["cat", "ox", "zebra"]
  vocabulary = ["".join(chr(97 + (i * 7 + j) % 26) for j in range(1 + i % 9)) for i in range(400)]
  train = [w for w in vocabulary if words.in_split(w, "train")]
  test = [w for w in vocabulary if words.in_split(w, "test")]
  assert not set(train) & set(test) and len(train) + len(test) == len(vocabulary)
  assert 0 < len(test) < 0.15 * len(vocabulary)
  source = words.WordSource.from_file(path, split="train", size=2)
  grids, labels = source.read([0, 1])
  assert labels is None and grids[0].shape == (2, 2, 1) and grids[0].dtype == np.uint8
  tokens = levels.uint8_to_tokens(np.stack(grids), words.NUM_TOKENS)
  assert words.decode(np.asarray(tokens)) == list(source.words[:2])
  with pytest.raises(FileNotFoundError, match="apt-get install -y wamerican"):
    words.read_words(tmp_path / "missing")


def test_word_statistics_and_baselines():
  stats = word_eval.word_statistics(["cat", "cat", "dog", None, "zzz"], ["cat", "dog", "ox"],
                                    ["cat"])
  assert stats == {"well_formed": 0.8, "in_list": 0.6, "in_train": 0.4, "new_in_list": 0.2,
                   "distinct_valid": 0.4}
  # From a corpus of one word the bigram chain can only spell it again.
  assert set(word_eval.bigram_words(["cab"], 50, seed=0, max_length=8)) == {"cab"}
  # Unigram tokens of ["ab"]: a, b and the end token, 1/3 each, independently.
  drawn = word_eval.unigram_words(["ab"], 3000, seed=1, max_length=8)
  first = np.array([None if w is None else w[0] for w in drawn], object)
  for value in ("a", "b", None):
    share = np.mean(first == value) if value else np.mean([w is None for w in drawn])
    assert abs(share - 1 / 3) < 5 * np.sqrt(2 / 9 / 3000)
