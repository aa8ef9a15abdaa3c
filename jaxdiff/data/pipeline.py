"""A deterministic input pipeline: the batch of step s is a function of (seed, s) only.

Examples are visited epoch by epoch in the order of a fresh permutation per epoch
(NumPy's PCG64 seeded with (seed, 0, epoch)); random flips use (seed, 1, step); the
degradation of an image-to-image task (`jaxdiff.data.tasks`) of the example at position i
of the global batch uses (seed, 2, step, i). So a run
resumed at step s reads exactly the batches an uninterrupted run reads, and the data
position to checkpoint is the step itself. Each process reads only its own rows of every
global batch and places them on its devices; batches are prepared ahead in a thread.
"""

import collections
import concurrent.futures
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from PIL import Image

from jaxdiff import images as images_lib
from jaxdiff.data import tasks as tasks_lib
from jaxdiff.data.sources import ImageSource


def global_batch_indices(*, num_examples: int, batch_size: int, step: int,
                         seed: int) -> np.ndarray:
  """Example indices [batch_size] of global batch `step`, epoch after shuffled epoch."""
  positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_examples)
  indices = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    order = np.random.default_rng([seed, 0, int(epoch)]).permutation(num_examples)
    in_epoch = epochs == epoch
    indices[in_epoch] = order[offsets[in_epoch]]
  return indices


def flip_mask(*, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Which examples [batch_size] of global batch `step` are flipped horizontally."""
  return np.random.default_rng([seed, 1, step]).random(batch_size) < 0.5


def center_crop_resize(image: np.ndarray, *, size: int) -> np.ndarray:
  """Crops the central square of a uint8 [H, W, C] image and resizes it to [size, size].

  Resizing uses Pillow's bicubic filter (antialiased when shrinking).
  """
  height, width, channels = image.shape
  side = min(height, width)
  top, left = (height - side) // 2, (width - side) // 2
  image = image[top:top + side, left:left + side]
  if side == size:
    return image
  pil = Image.fromarray(image[..., 0] if channels == 1 else image)
  resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
  return resized.reshape(size, size, channels)


def task_inputs(task: tasks_lib.Task, images: np.ndarray, *, step: int, seed: int,
                positions: np.ndarray) -> dict[str, np.ndarray]:
  """The task's "condition" [n, h, w, c] of clean images [n, H, W, C] at global batch
  positions ``positions`` of step ``step`` (`Task.training_pair`), and its "aug_level" [n]
  when the task augments (augment_max > 0)."""
  pairs = [task.training_pair(image, np.random.default_rng([seed, 2, step, int(i)]))
           for image, i in zip(images, positions)]
  inputs = {"condition": np.stack([c for c, _ in pairs])}
  if task.augment_max > 0:
    inputs["aug_level"] = np.asarray([level for _, level in pairs], np.float32)
  return inputs


def host_batch(source: ImageSource, *, step: int, seed: int, batch_size: int,
               rows: slice, image_size: int, channels: int, random_flip: bool,
               task: tasks_lib.Task | None = None) -> dict[str, np.ndarray]:
  """This process's `rows` of global batch `step`: images [n, S, S, C] in [-1, 1], labels,
  and with a `task` its "condition" and "aug_level" (`task_inputs`)."""
  indices = global_batch_indices(num_examples=len(source), batch_size=batch_size,
                                 step=step, seed=seed)[rows]
  images, labels = source.read(indices)
  for image in images:
    if image.ndim != 3 or image.shape[-1] != channels or image.dtype != np.uint8:
      raise ValueError(
          f"Source image {image.dtype} {image.shape} does not match config.data.channels="
          f"{channels} (expected uint8 [H, W, {channels}]).")
  batch = {"image": images_lib.from_uint8(np.stack(
      [center_crop_resize(image, size=image_size) for image in images]))}
  if random_flip:
    flips = flip_mask(batch_size=batch_size, step=step, seed=seed)[rows]
    batch["image"] = np.where(flips[:, None, None, None], batch["image"][:, :, ::-1],
                              batch["image"])
  if labels is not None:
    batch["label"] = labels
  if task is not None:
    batch.update(task_inputs(task, batch["image"], step=step, seed=seed,
                             positions=np.arange(batch_size)[rows]))
  return batch


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> slice:
  """The contiguous rows of a [batch_size, ...] global array this process's devices hold."""
  index_map = sharding.addressable_devices_indices_map((batch_size,))
  starts = [index[0].indices(batch_size)[0] for index in index_map.values()]
  stops = [index[0].indices(batch_size)[1] for index in index_map.values()]
  rows = slice(min(starts), max(stops))
  covered = sum(stop - start for start, stop in set(zip(starts, stops)))
  if covered != rows.stop - rows.start:
    raise ValueError(
        f"This process's batch rows {sorted(set(zip(starts, stops)))} are not contiguous; "
        "order the mesh devices by process.")
  return rows


def device_batches(source: ImageSource, data_config: ml_collections.ConfigDict, *,
                   seed: int, batch_size: int, start_step: int, num_steps: int,
                   sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """Yields global batches for steps start_step..num_steps-1, sharded by `sharding`.

  `data_config.prefetch` batches are read, preprocessed and transferred ahead of use;
  `data_config.task` names the image-to-image task whose inputs the batches carry.
  """
  rows = process_rows(sharding, batch_size)
  task = tasks_lib.task_from_config(data_config)

  def load(step: int) -> dict[str, jax.Array]:
    local = host_batch(source, step=step, seed=seed, batch_size=batch_size, rows=rows,
                       image_size=data_config.image_size, channels=data_config.channels,
                       random_flip=data_config.random_flip, task=task)
    return {key: jax.make_array_from_process_local_data(
        sharding, value, (batch_size,) + value.shape[1:]) for key, value in local.items()}

  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
    pending = collections.deque()
    next_step = start_step
    try:
      while next_step < num_steps or pending:
        while next_step < num_steps and len(pending) <= data_config.prefetch:
          pending.append(executor.submit(load, next_step))
          next_step += 1
        yield pending.popleft().result()
    finally:
      for future in pending:
        future.cancel()
