"""Words of a word list as token grids: the text data of the discrete objectives.

The default list is Debian's `wamerican` (/usr/share/dict/words; `apt-get install -y
wamerican`). Words of lowercase letters a-z only are kept (no capitals, apostrophes or
accents), at most ``size * size`` letters long, without duplicates, in sorted order. A word
is ``size * size`` tokens read row-major from a [size, size, 1] grid: its letters (a = 0 ..
z = 25) then the end token 26 up to the full length, so K = 27 categories. Grids are stored
as uint8 gray levels (`jaxdiff.discrete.levels`), so words travel through the image
pipeline of the training job unchanged.

Splits: a word is in "test" when crc32(word) % 20 == 0 (about 5 %, fixed by the word alone),
else in "train".
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections.abc import Sequence
from typing import Optional

import numpy as np

from jaxdiff.discrete import levels

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
END = len(ALPHABET)            # the token after a word's last letter
NUM_TOKENS = len(ALPHABET) + 1
SPLITS = ("train", "test")
_WORD = re.compile(r"[a-z]+")


def read_words(path: str | os.PathLike, *, max_length: Optional[int] = None) -> list[str]:
  """The sorted unique lowercase a-z words of a word list (one a line), at most
  ``max_length`` letters. Raises FileNotFoundError naming the Debian package to install."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no word list at {os.fspath(path)!r}; install Debian's wamerican "
                            "(apt-get install -y wamerican) or set config.data.word_list")
  with open(path, encoding="utf-8", errors="replace") as f:
    words = {line.strip() for line in f}
  return sorted(w for w in words if _WORD.fullmatch(w)
                and (max_length is None or len(w) <= max_length))


def in_split(word: str, split: str) -> bool:
  """Whether ``word`` belongs to ``split`` ("train" or "test"; module docstring)."""
  if split not in SPLITS:
    raise ValueError(f"word split {split!r} is not one of {SPLITS}")
  return (zlib.crc32(word.encode()) % 20 == 0) == (split == "test")


def encode(words: Sequence[str], length: int) -> np.ndarray:
  """int32 tokens [N, length]: each word's letters, then END to the full length."""
  tokens = np.full((len(words), length), END, np.int32)
  for row, word in enumerate(words):
    if len(word) > length or not _WORD.fullmatch(word):
      raise ValueError(f"cannot encode {word!r}: expected 1..{length} letters a-z")
    tokens[row, :len(word)] = [ALPHABET.index(c) for c in word]
  return tokens


def decode(tokens: np.ndarray) -> list[Optional[str]]:
  """The word of each row of tokens [N, ...] (read row-major): the letters before the first
  END; None when a letter follows an END or the row starts with END (no word)."""
  rows = np.asarray(tokens).reshape(len(tokens), -1)
  out = []
  for row in rows:
    ends = np.flatnonzero(row == END)
    stop = int(ends[0]) if ends.size else len(row)
    well_formed = stop > 0 and np.all(row[stop:] == END)
    out.append("".join(ALPHABET[k] for k in row[:stop]) if well_formed else None)
  return out


def render(tokens: np.ndarray) -> list[str]:
  """Each row of tokens [N, ...] as text: its word, or (malformed) its letters with "."
  for END tokens."""
  rows = np.asarray(tokens).reshape(len(tokens), -1)
  return [word if word is not None else "".join(
      "." if k == END else ALPHABET[k] for k in row) for word, row in zip(decode(rows), rows)]


@dataclasses.dataclass(frozen=True)
class WordSource:
  """The words of one split as uint8 grids [size, size, 1] (an `ImageSource`, no labels)."""

  images: np.ndarray
  words: tuple[str, ...]

  @classmethod
  def from_file(cls, path: str | os.PathLike, *, split: str, size: int) -> "WordSource":
    words = tuple(w for w in read_words(path, max_length=size * size) if in_split(w, split))
    grids = encode(words, size * size).reshape(-1, size, size, 1)
    return cls(images=np.asarray(levels.tokens_to_uint8(grids, NUM_TOKENS)), words=words)

  def __len__(self) -> int:
    return len(self.words)

  def read(self, indices: Sequence[int]) -> tuple[list[np.ndarray], None]:
    return list(self.images[np.asarray(indices, np.int64)]), None
