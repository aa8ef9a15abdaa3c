"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow), stdout and JSON lines.

Scalars also go to LOGDIR/metrics.jsonl, one `{"step": N, name: value, ...}` per line, which
scripts and tests read without TensorBoard.

In multi-process runs only process 0 should write: build the writer with
`enabled=(jax.process_index() == 0)` and the others become no-ops.
"""

import json
import os
import sys
from collections.abc import Mapping

import numpy as np


class MetricWriter:
  """Writes scalars and images under `logdir` and prints scalars as one line each."""

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True):
    self.enabled = enabled
    self._writer = None
    self._jsonl = os.path.join(os.fspath(logdir), "metrics.jsonl")
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.fspath(logdir))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One TensorBoard point per scalar at `step`, a JSON line, and `step N | name value`."""
    if not self.enabled:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), global_step=step)
    with open(self._jsonl, "a") as f:
      f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    line = " | ".join(f"{name} {float(value):.5g}" for name, value in scalars.items())
    print(f"step {step} | {line}", file=sys.stdout, flush=True)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """A uint8 [H, W, C] image as TensorBoard image `name` at `step`."""
    if self.enabled:
      self._writer.add_image(name, image, global_step=step, dataformats="HWC")

  def flush(self) -> None:
    if self.enabled:
      self._writer.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.close()
