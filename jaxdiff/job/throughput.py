"""Training throughput: images/s, achieved TFLOP/s and model FLOPs utilisation (MFU).

FLOPs per step come from XLA's cost analysis of the compiled train step: for a program
partitioned over a mesh it counts the work of one device, so

    TFLOP/s = flops_per_step_per_device * num_devices * steps/s / 1e12
    MFU     = flops_per_step_per_device * steps/s / peak FLOP/s of one device

(Chowdhery et al. 2022, PaLM, App. B, count the model's FLOPs the same way; XLA's count
includes the optimizer and EMA, which are a small fraction). The peak is the vendor's dense
bf16 figure for known accelerators (`PEAK_TFLOPS`), else the best of a few large matmuls
timed once on the device (`measure_matmul_peak`).
"""

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp

# Dense (no 2:4 sparsity) bf16 TFLOP/s per device, from the vendors' data sheets. Matched
# against `jax.Device.device_kind` in order, so the specific names come first.
PEAK_TFLOPS: tuple[tuple[str, float, str], ...] = (
    ("h200", 989.0, "NVIDIA H200 SXM data sheet: 1,979 TFLOPS bf16 with sparsity"),
    ("h100 pcie", 756.0, "NVIDIA H100 PCIe data sheet: 1,513 TFLOPS bf16 with sparsity"),
    ("h100", 989.0, "NVIDIA H100 SXM data sheet: 1,979 TFLOPS bf16 with sparsity"),
    ("a100", 312.0, "NVIDIA A100 data sheet: 312 TFLOPS bf16 dense"),
    ("tpu v5 lite", 197.0, "Google Cloud TPU v5e: 197 TFLOPS bf16 per chip"),
    ("tpu v5e", 197.0, "Google Cloud TPU v5e: 197 TFLOPS bf16 per chip"),
    ("tpu v5", 459.0, "Google Cloud TPU v5p: 459 TFLOPS bf16 per chip"),
    ("tpu v4", 275.0, "Google Cloud TPU v4: 275 TFLOPS bf16 per chip"),
)


@dataclasses.dataclass(frozen=True)
class Peak:
  """The peak FLOP/s of one device and where the number comes from."""

  flops_per_sec: float
  source: str


def table_peak(device_kind: str) -> Peak | None:
  """The data-sheet peak of a known accelerator (`PEAK_TFLOPS`), else None."""
  kind = device_kind.lower()
  for name, tflops, source in PEAK_TFLOPS:
    if name in kind:
      return Peak(flops_per_sec=tflops * 1e12, source=source)
  return None


def measure_matmul_peak(device: jax.Device, *, size: int, dtype: Any,
                        repeats: int = 3) -> float:
  """FLOP/s of the fastest of `repeats` size x size matmuls (2 size^3 FLOPs) on `device`."""
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(jnp.matmul).lower(a, a).compile()
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def device_peak(device: jax.Device) -> Peak:
  """`table_peak` of the device, else a matmul measured on it (1024^2 float32 on a CPU,
  4096^2 bf16 elsewhere: a fraction of a second)."""
  peak = table_peak(device.device_kind)
  if peak is not None:
    return peak
  on_cpu = device.platform == "cpu"
  size, dtype = (1024, jnp.float32) if on_cpu else (4096, jnp.bfloat16)
  flops = measure_matmul_peak(device, size=size, dtype=dtype)
  return Peak(flops_per_sec=flops, source=f"measured {size}^2 {jnp.dtype(dtype).name} "
                                          f"matmul on {device.device_kind}")


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one call of a compiled function on one device (XLA's cost analysis), or None
  when the backend does not report them."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without cost analysis)
    return None
  if isinstance(analysis, (list, tuple)):  # Older jax: one dict per program.
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


@dataclasses.dataclass(frozen=True)
class Throughput:
  """Turns steps/s into the logged throughput scalars of one training job."""

  flops_per_step: float | None   # Per device, from `compiled_flops`.
  peak: Peak
  num_devices: int
  batch_size: int                # Global images per step.

  def scalars(self, steps_per_sec: float) -> dict[str, float]:
    """{"images_per_sec", "tflops" (all devices), "mfu" (fraction of peak)}; without a
    FLOP count only images_per_sec."""
    scalars = {"images_per_sec": steps_per_sec * self.batch_size}
    if self.flops_per_step is not None:
      per_device = self.flops_per_step * steps_per_sec
      scalars["tflops"] = per_device * self.num_devices / 1e12
      scalars["mfu"] = per_device / self.peak.flops_per_sec
    return scalars

  def describe(self) -> str:
    """One line for the start of the log."""
    flops = ("unknown" if self.flops_per_step is None
             else f"{self.flops_per_step / 1e9:.3g} GFLOP")
    return (f"Throughput: {flops} per step per device (XLA cost analysis); peak "
            f"{self.peak.flops_per_sec / 1e12:.4g} TFLOP/s per device ({self.peak.source}).")
