"""Benchmark sizes shared by the jaxdiff and peer workers (pure Python: no jax, no torch).

Both workers build their U-Net from the same `ModelSize`, so the two libraries run the
same architecture: DDPM's U-Net (Ho et al. 2020, App. B), which is diffusers'
`UNet2DModel` in the google/ddpm-cifar10-32 configuration at full size.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class ModelSize:
  """One DDPM U-Net: `len(channel_mult)` levels, attention at `attention_level`."""

  image_size: int
  channels: int
  base_channels: int
  channel_mult: tuple[int, ...]
  num_res_blocks: int
  attention_level: int
  dropout: float
  num_groups: int = 32

  @property
  def attention_resolution(self) -> int:
    """Height of the feature map that has self-attention (16 for CIFAR-10)."""
    return self.image_size // 2**self.attention_level


@dataclasses.dataclass(frozen=True)
class Preset:
  """Model, batches and step counts of one benchmark run."""

  name: str
  model: ModelSize
  train_batches: tuple[int, ...]
  train_steps_per_rep: int
  sample_batch: int
  num_timesteps: int
  ddpm_steps: int
  ddim_steps: int
  rounds: int
  micro_steps: int
  matmul_size: int


CIFAR10 = ModelSize(
    image_size=32, channels=3, base_channels=128, channel_mult=(1, 2, 2, 2),
    num_res_blocks=2, attention_level=1, dropout=0.1,
)

SMALL = ModelSize(
    image_size=16, channels=3, base_channels=32, channel_mult=(1, 2),
    num_res_blocks=1, attention_level=1, dropout=0.1,
)

TINY = ModelSize(
    image_size=8, channels=3, base_channels=16, channel_mult=(1, 2),
    num_res_blocks=1, attention_level=1, dropout=0.1, num_groups=8,
)

PRESETS: dict[str, Preset] = {
    # The GPU configuration: DDPM CIFAR-10, batches 128 and 512, full chains.
    "full": Preset(
        name="full", model=CIFAR10, train_batches=(128, 512), train_steps_per_rep=20,
        sample_batch=256, num_timesteps=1000, ddpm_steps=1000, ddim_steps=50, rounds=5,
        micro_steps=4, matmul_size=8192,
    ),
    # A 2-core CPU: the same architecture family, small enough for minutes per run.
    "cpu": Preset(
        name="cpu", model=SMALL, train_batches=(32, 128), train_steps_per_rep=4,
        sample_batch=32, num_timesteps=1000, ddpm_steps=50, ddim_steps=10, rounds=5,
        micro_steps=4, matmul_size=2048,
    ),
    # The GPU check's dry run (benchmarks/gpu_check.sh --smoke): every code path, on a CPU,
    # in minutes.
    "smoke": Preset(
        name="smoke", model=TINY, train_batches=(4, 8), train_steps_per_rep=2,
        sample_batch=4, num_timesteps=1000, ddpm_steps=4, ddim_steps=2, rounds=2,
        micro_steps=2, matmul_size=256,
    ),
}
