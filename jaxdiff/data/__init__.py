"""Image data for diffusion training: sources (TFDS, IDX) and a deterministic pipeline."""

from jaxdiff.data.digits_builder import SklearnDigits
from jaxdiff.data.idx import load_idx_split, read_idx
from jaxdiff.data.pipeline import (center_crop_resize, device_batches, flip_mask,
                                   global_batch_indices, host_batch, process_rows)
from jaxdiff.data.sources import ArraySource, ImageSource, TfdsSource, make_source, tfds_source

__all__ = [
    "ArraySource", "ImageSource", "SklearnDigits", "TfdsSource", "center_crop_resize",
    "device_batches", "flip_mask", "global_batch_indices", "host_batch", "load_idx_split",
    "make_source", "process_rows", "read_idx", "tfds_source",
]
