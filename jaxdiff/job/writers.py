"""Metrics to TensorBoard event files (tensorboardX, no TensorFlow), stdout and JSON lines.

Scalars also go to LOGDIR/metrics.jsonl, one `{"step": N, name: value, ...}` per line, which
scripts and tests read without TensorBoard. A writer for a run resumed at step S first
drops what an interrupted run logged after S (lines of metrics.jsonl, and TensorBoard
points through a purge event), so that the resumed run's logs are not duplicates.

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

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self._writer = None
    self._jsonl = os.path.join(os.fspath(logdir), "metrics.jsonl")
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      if resume_step is not None:
        self._drop_after(resume_step)
      self._writer = SummaryWriter(
          os.fspath(logdir), purge_step=None if resume_step is None else resume_step + 1)

  def _drop_after(self, step: int) -> None:
    """Rewrites metrics.jsonl (atomically) without the lines of steps after `step`."""
    if not os.path.exists(self._jsonl):
      return
    with open(self._jsonl) as f:
      lines = f.read().splitlines()
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):
        continue  # A line cut short by a crash.
    if len(kept) == len(lines):
      return
    partial = self._jsonl + ".partial"
    with open(partial, "w") as f:
      f.write("".join(line + "\n" for line in kept))
    os.replace(partial, self._jsonl)

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
