"""Named configurations: ``UNet(**PRESETS[name])`` and ``DiT(**DIT_PRESETS[name])``.

- ``ddpm_cifar10``: Ho et al. 2020's CIFAR-10 model (App. B), 35,746,307 parameters
  for 3 channels (the paper's 35.7M).
- ``small_28``: a small model for 28x28 images (e.g. MNIST); levels 28, 14, 7; 1.62M.
- ``small_8``: a tiny model for 8x8 images (e.g. scikit-learn digits); levels 8, 4; 0.70M.
- ``adm_imagenet64_cond``: the class-conditional ImageNet 64x64 model of
  Dhariwal & Nichol 2021 (their released ``model_flags``); 295.9M with the extra
  null-label row (the paper's 296M).
"""

from typing import Any

def _small(channel_mult: tuple[int, ...], num_res_blocks: int, attention: int,
           dropout: float) -> dict[str, Any]:
  """A 32-channel, single-head model with 8 normalization groups."""
  return dict(base_channels=32, channel_mult=channel_mult, num_res_blocks=num_res_blocks,
              attention_resolutions=(attention,), num_heads=1, num_groups=8, dropout=dropout)


PRESETS: dict[str, dict[str, Any]] = {
    "ddpm_cifar10": dict(
        base_channels=128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        num_heads=1,
        dropout=0.1,
    ),
    "small_28": _small((1, 2, 2), 2, 7, 0.1),
    "small_8": _small((1, 2), 1, 4, 0.0),
    "adm_imagenet64_cond": dict(
        base_channels=192,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=3,
        attention_resolutions=(32, 16, 8),
        num_head_channels=64,
        dropout=0.1,
        use_scale_shift_norm=True,
        resblock_updown=True,
        num_classes=1000,
        learn_sigma=True,
    ),
}


# DiT (Peebles & Xie 2023, Table 4): (depth, hidden size, heads) of S, B, L and XL, each
# with patch sizes 2, 4 and 8, named as in the paper ("DiT-XL/2"). The paper's models are
# class-conditional with learned sigma on 32x32x4 latents: add num_classes=1000,
# learn_sigma=True for those.
_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
DIT_PRESETS: dict[str, dict[str, Any]] = {
    f"DiT-{size}/{patch}": dict(depth=depth, hidden_size=hidden, num_heads=heads,
                                patch_size=patch)
    for size, (depth, hidden, heads) in _DIT_SIZES.items()
    for patch in (2, 4, 8)
}
