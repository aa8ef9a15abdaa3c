"""Post-hoc EMA in the training job: snapshots of the tracked power-function EMAs, and the
checkpoint of any other EMA length reconstructed from them (`jaxdiff.ema`; Karras et al. 2024,
Sec. 3.2 and App. C).

With `config.train.posthoc_sigma_rels` set, the train state carries one power-function EMA per
sigma_rel (`jaxdiff.job.step`), and every `config.train.posthoc_every` steps and at the last
step the trainer writes them to

    WORKDIR/posthoc_ema/<step>.npz     (NumPy arrays "step", "sigma_rels", and
                                        "ema<i>/<parameter path>" for profile i)

written to a temporary name and renamed, so a snapshot is whole or absent. `solve` finds the
least-squares weights of the EMA of another sigma_rel at a snapshot step, and `write` writes
that EMA as the EMA parameters of a normal jaxdiff workdir (config.json, checkpoints/<step>/)
that sample.py and `python -m jaxdiff.evaluate` read; `python -m jaxdiff.reconstruct_ema` is
their command line.
Snapshots are read with `allow_pickle=False`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import Any, Optional

import jax
import numpy as np
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxdiff import ema
from jaxdiff.job import checkpoints
from jaxdiff.job import step as step_lib

SNAPSHOT_DIR = "posthoc_ema"
REPORT_FILE = "posthoc_ema.json"


def _flat(tree: Any) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def save_snapshot(workdir: str | os.PathLike, state: step_lib.TrainState, step: int,
                  sigma_rels: tuple[float, ...]) -> None:
  """Writes the tracked EMAs of `state` after `step` steps (module docstring); every process
  takes part in gathering them, process 0 writes."""
  trees = multihost_utils.process_allgather(state.posthoc_emas, tiled=True)
  if jax.process_index() != 0:
    return
  arrays = {"step": np.asarray(step, np.int64),
            "sigma_rels": np.asarray(sigma_rels, np.float64)}
  for i, tree in enumerate(trees):
    arrays.update({f"ema{i}/{k}": v for k, v in _flat(tree).items()})
  directory = epath.Path(workdir) / SNAPSHOT_DIR
  directory.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  tmp = directory / f".{step:08d}.npz.tmp"
  tmp.write_bytes(buffer.getvalue())
  tmp.rename(directory / f"{step:08d}.npz")


def list_snapshots(workdir: str | os.PathLike) -> list[tuple[int, tuple[float, ...], Any]]:
  """(step, sigma_rels, path) of every snapshot in WORKDIR/posthoc_ema, by step."""
  directory = epath.Path(workdir) / SNAPSHOT_DIR
  found = []
  for path in sorted(directory.glob("*.npz")) if directory.exists() else ():
    with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
      found.append((int(data["step"]), tuple(float(s) for s in data["sigma_rels"]), path))
  return sorted(found, key=lambda item: item[0])


def _weighted_sum(snapshots: list[tuple[int, tuple[float, ...], Any]],
                  weights: np.ndarray) -> dict[str, np.ndarray]:
  """sum_i weights[i] theta_hat_i over the (snapshot, profile) basis, one file at a time, in
  float64."""
  total: dict[str, np.ndarray] = {}
  index = 0
  for _, sigma_rels, path in snapshots:
    with path.open("rb") as f, np.load(f, allow_pickle=False) as data:
      for i in range(len(sigma_rels)):
        prefix = f"ema{i}/"
        for key in (k for k in data.files if k.startswith(prefix)):
          value = weights[index] * data[key].astype(np.float64)
          name = key[len(prefix):]
          total[name] = total[name] + value if name in total else value
        index += 1
  return total


def _checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
  checkpointer = checkpoints.Checkpointer(epath.Path(workdir) / checkpoints.CHECKPOINT_DIR,
                                          max_to_keep=None, async_save=False)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


@dataclasses.dataclass(frozen=True)
class Reconstruction:
  """A solved reconstruction: its report and the snapshots and weights it combines."""

  workdir: str
  report: dict[str, Any]
  snapshots: list[tuple[int, tuple[float, ...], Any]]
  weights: np.ndarray


def solve(workdir: str | os.PathLike, *, sigma_rel: float,
          step: Optional[int] = None) -> Reconstruction:
  """The least-squares reconstruction of the EMA of `sigma_rel` at snapshot `step` (default:
  the last) from WORKDIR's snapshots (`jaxdiff.ema.solve_weights`); its report holds
  sigma_rel, gamma, step, the snapshots' (step, sigma_rel) with their weights, and the
  relative L2 error of the profile fit.

  Raises:
    ValueError: on a sigma_rel out of range, a run without snapshots or an unknown step.
  """
  gamma = ema.sigma_rel_to_gamma(sigma_rel)
  snapshots = list_snapshots(workdir)
  if not snapshots:
    raise ValueError(f"no post-hoc EMA snapshots in {os.fspath(workdir)}/{SNAPSHOT_DIR}: train "
                     "with config.train.posthoc_sigma_rels and config.train.posthoc_every set")
  steps = [s for s, _, _ in snapshots]
  target = steps[-1] if step is None else step
  if target not in steps:
    raise ValueError(f"no snapshot at step {target}; the snapshots are at steps {steps}")
  used = [item for item in snapshots if item[0] <= target]
  basis = [(s, ema.sigma_rel_to_gamma(r), r) for s, rels, _ in used for r in rels]
  weights, error = ema.solve_weights([b[0] for b in basis], [b[1] for b in basis], target, gamma)
  report = {"sigma_rel": float(sigma_rel), "gamma": gamma, "step": target,
            "relative_error": error,
            "basis": [{"step": s, "sigma_rel": r, "weight": float(w)}
                      for (s, _, r), w in zip(basis, weights)]}
  return Reconstruction(os.fspath(workdir), report, used, weights)


def write(reconstruction: Reconstruction, out: str | os.PathLike) -> dict[str, Any]:
  """Writes OUT, a workdir whose checkpoint holds the reconstructed EMA as its EMA parameters;
  the rest of the state is the run's checkpoint at the snapshot step (else its newest).
  Returns the report (with "checkpoint_step"), also written to OUT/posthoc_ema.json.

  Raises:
    ValueError: if OUT already holds checkpoints.
  """
  out_dir = epath.Path(out)
  if (out_dir / checkpoints.CHECKPOINT_DIR).exists() and any(
      (out_dir / checkpoints.CHECKPOINT_DIR).iterdir()):
    raise ValueError(f"{os.fspath(out)} already holds checkpoints; choose a new output folder")
  workdir, target = reconstruction.workdir, reconstruction.report["step"]
  flat = _weighted_sum(reconstruction.snapshots, reconstruction.weights)
  config, restored = checkpoints.load_workdir(
      workdir, step=target if target in _checkpoint_steps(workdir) else None)
  params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
  ema_params = jax.tree.map(lambda ref, new: np.asarray(new, ref.dtype),
                            restored.state.ema_params, params)
  report = {**reconstruction.report, "checkpoint_step": restored.step}
  checkpoints.write_config(out_dir, config)
  checkpointer = checkpoints.Checkpointer(out_dir / checkpoints.CHECKPOINT_DIR, max_to_keep=None,
                                          async_save=False)
  try:
    checkpointer.save(restored.step, restored.state.replace(ema_params=ema_params), restored.rng,
                      metadata={**restored.metadata, "posthoc_ema": report})
  finally:
    checkpointer.close()
  (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
  return report
