"""Generated words against the word list, with character n-gram baselines.

A sample is well formed when it is letters then end tokens (`jaxdiff.data.words.decode`);
its word counts as valid when it is in the word list. `word_statistics` gives the shares of
samples that are well formed, in the list, in the training split (memorized) and in the list
but not the training split (valid new words). The baselines draw words letter by letter from
the training words' unigram distribution (letters and the end token, independent) or their
bigram chain (each letter given the previous one, from a start state, until the end token),
at most ``max_length`` letters, and are scored the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Optional

import numpy as np

from jaxdiff.data.words import ALPHABET, END, NUM_TOKENS


def word_statistics(samples: Sequence[Optional[str]], vocabulary: Iterable[str],
                    train_words: Iterable[str]) -> dict[str, float]:
  """Shares of ``samples`` (words, None = malformed) that are well formed, in the list, in
  the training words, and in the list but new; and the distinct valid words' share."""
  vocabulary, train_words = set(vocabulary), set(train_words)
  n = len(samples)
  valid = [w for w in samples if w is not None and w in vocabulary]
  return {"well_formed": sum(w is not None for w in samples) / n,
          "in_list": len(valid) / n,
          "in_train": sum(w in train_words for w in valid) / n,
          "new_in_list": sum(w not in train_words for w in valid) / n,
          "distinct_valid": len(set(valid)) / n}


def _tokens(word: str) -> list[int]:
  return [ALPHABET.index(c) for c in word] + [END]


def _draw(transitions: np.ndarray, num_words: int, rng: np.random.Generator,
          max_length: int) -> list[str]:
  """Words from a chain over tokens: transitions[s] is the law of the next token after state
  s (state NUM_TOKENS is the start); a word ends at END or after max_length letters."""
  out = []
  for _ in range(num_words):
    state, letters = NUM_TOKENS, []
    while len(letters) < max_length:
      state = int(rng.choice(NUM_TOKENS, p=transitions[state]))
      if state == END:
        break
      letters.append(ALPHABET[state])
    out.append("".join(letters) or None)
  return out


def unigram_words(train_words: Sequence[str], num_words: int, *, seed: int,
                  max_length: int) -> list[Optional[str]]:
  """Words of independent tokens drawn from the training words' token frequencies."""
  counts = np.bincount(np.concatenate([_tokens(w) for w in train_words]), minlength=NUM_TOKENS)
  law = counts / counts.sum()
  return _draw(np.tile(law, (NUM_TOKENS + 1, 1)), num_words, np.random.default_rng(seed),
               max_length)


def bigram_words(train_words: Sequence[str], num_words: int, *, seed: int,
                 max_length: int) -> list[Optional[str]]:
  """Words of the training words' bigram chain (from the start state to the end token)."""
  counts = np.zeros((NUM_TOKENS + 1, NUM_TOKENS))
  for word in train_words:
    tokens = _tokens(word)
    for prev, nxt in zip([NUM_TOKENS] + tokens[:-1], tokens):
      counts[prev, nxt] += 1
  counts[END] = 1.0            # never used: END stops a word
  return _draw(counts / counts.sum(axis=1, keepdims=True), num_words,
               np.random.default_rng(seed), max_length)
