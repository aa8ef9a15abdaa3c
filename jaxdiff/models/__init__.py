"""Denoiser networks: the DDPM / ADM U-Net and its building blocks."""

from jaxdiff.models.attention import AttentionBlock
from jaxdiff.models.embeddings import sinusoidal_embedding
from jaxdiff.models.presets import PRESETS
from jaxdiff.models.resample import Downsample, Upsample
from jaxdiff.models.resnet import ResBlock
from jaxdiff.models.unet import UNet

__all__ = [
    "PRESETS",
    "AttentionBlock",
    "Downsample",
    "ResBlock",
    "UNet",
    "Upsample",
    "sinusoidal_embedding",
]
