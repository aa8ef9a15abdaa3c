"""The peer's side of the benchmark: diffusers' UNet2DModel in PyTorch, driven by bench.py.

Run with benchmarks/.venv-peer's python (setup_peer_env.sh). The peer is a standard
diffusers setup: UNet2DModel in the google/ddpm-cifar10-32 layout, DDPMScheduler.add_noise,
MSE on eps, torch.optim.Adam, clip_grad_norm_ and an EMA of the weights (the same work
as jaxdiff.job.step.train_step), in eager mode or with torch.compile(model); bf16 is
torch.autocast with float32 weights. Sampling is the DDPMScheduler / DDIMScheduler step
loop of diffusers' pipelines, under torch.inference_mode.
"""

from typing import Any

import diffusers
import torch
import torch.nn.functional as F

import presets
import worker_protocol

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_unet(size: presets.ModelSize) -> diffusers.UNet2DModel:
  """UNet2DModel with the DDPM layout of `size`: one attention level, a single head."""
  levels = range(len(size.channel_mult))
  down = tuple("AttnDownBlock2D" if level == size.attention_level else "DownBlock2D"
               for level in levels)
  up = tuple(block.replace("Down", "Up") for block in reversed(down))
  return diffusers.UNet2DModel(
      sample_size=size.image_size, in_channels=size.channels, out_channels=size.channels,
      block_out_channels=tuple(m * size.base_channels for m in size.channel_mult),
      layers_per_block=size.num_res_blocks, down_block_types=down, up_block_types=up,
      attention_head_dim=None, norm_num_groups=size.num_groups, norm_eps=1e-6,
      downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=size.dropout,
  )


def common_info(model: torch.nn.Module, images_per_call: int) -> dict[str, Any]:
  """Parameter count, versions and threads, for the driver's table."""
  return {
      "params": sum(p.numel() for p in model.parameters()),
      "images_per_call": images_per_call,
      "torch": torch.__version__,
      "diffusers": diffusers.__version__,
      "threads": torch.get_num_threads(),
      "device": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu",
  }


def synchronize() -> None:
  """Waits for queued GPU work; the CPU runs synchronously."""
  if DEVICE.type == "cuda":
    torch.cuda.synchronize()


class TorchWorkload:
  """Peak memory of a peer workload."""

  def device_peak_mb(self) -> float | None:
    """torch.cuda.max_memory_allocated in MiB, or None on CPU."""
    if DEVICE.type != "cuda":
      return None
    return torch.cuda.max_memory_allocated() / 2.0**20


class TrainWorkload(TorchWorkload):
  """One standard diffusers training step per call."""

  def __init__(self, preset: presets.Preset, spec: dict[str, Any]):
    torch.manual_seed(0)
    size = preset.model
    self.model = build_unet(size).to(DEVICE).train()
    self.forward = torch.compile(self.model) if spec["compile"] else self.model
    self.params = [p for p in self.model.parameters()]
    self.ema = [p.detach().clone() for p in self.params]
    self.optimizer = torch.optim.Adam(self.params, lr=2e-4)
    self.scheduler = diffusers.DDPMScheduler(num_train_timesteps=preset.num_timesteps)
    shape = (spec["batch"], size.channels, size.image_size, size.image_size)
    self.images = torch.rand(shape, device=DEVICE) * 2 - 1
    self.autocast = torch.autocast(DEVICE.type, dtype=DTYPES[spec["dtype"]],
                                   enabled=spec["dtype"] != "float32")
    self.info = common_info(self.model, spec["batch"])

  def call(self) -> None:
    """Noise, predict eps, MSE, backward, clip, Adam, EMA."""
    noise = torch.randn_like(self.images)
    t = torch.randint(0, self.scheduler.config.num_train_timesteps, self.images.shape[:1],
                      device=DEVICE)
    x_t = self.scheduler.add_noise(self.images, noise, t)
    with self.autocast:
      eps = self.forward(x_t, t).sample
    loss = F.mse_loss(eps.float(), noise)
    self.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(self.ema, self.params, 1.0 - 0.9999)
    synchronize()


class SampleWorkload(TorchWorkload):
  """One whole DDPM or DDIM chain for a batch, as in diffusers' pipelines."""

  def __init__(self, preset: presets.Preset, spec: dict[str, Any]):
    torch.manual_seed(0)
    size = preset.model
    self.model = build_unet(size).to(DEVICE).eval()
    self.forward = torch.compile(self.model) if spec["compile"] else self.model
    if spec["workload"] == "ddpm":
      self.scheduler = diffusers.DDPMScheduler(num_train_timesteps=preset.num_timesteps)
      self.scheduler.set_timesteps(preset.ddpm_steps)
      self.step_kw: dict[str, Any] = {}
    else:
      self.scheduler = diffusers.DDIMScheduler(num_train_timesteps=preset.num_timesteps)
      self.scheduler.set_timesteps(preset.ddim_steps)
      self.step_kw = {"eta": 0.0}
    self.shape = (preset.sample_batch, size.channels, size.image_size, size.image_size)
    self.info = common_info(self.model, preset.sample_batch)

  def call(self) -> None:
    """Samples one batch."""
    generator = torch.Generator(DEVICE).manual_seed(3)
    with torch.inference_mode():
      x = torch.randn(self.shape, generator=generator, device=DEVICE)
      for t in self.scheduler.timesteps:
        eps = self.forward(x, t).sample
        x = self.scheduler.step(eps, t, x, generator=generator, **self.step_kw).prev_sample
    synchronize()


WORKLOADS = {"train": TrainWorkload, "ddpm": SampleWorkload, "ddim": SampleWorkload}


def build(spec: dict[str, Any]) -> worker_protocol.Workload:
  """The workload that `spec` names, at its preset's size."""
  return WORKLOADS[spec["workload"]](presets.PRESETS[spec["preset"]], spec)


if __name__ == "__main__":
  worker_protocol.serve(build)
