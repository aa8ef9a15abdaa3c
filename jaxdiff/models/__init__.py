"""Denoiser networks: the DDPM / ADM U-Net, the DiT, and their building blocks."""

from jaxdiff.models.attention import AttentionBlock
from jaxdiff.models.categorical import OneHotInput, TokenTransformer
from jaxdiff.models.dit import DiT, DiTBlock
from jaxdiff.models.embeddings import sinusoidal_embedding
from jaxdiff.models.nnx_adapter import nnx_model_fn
from jaxdiff.models.openai_unet import load_openai_unet
from jaxdiff.models.presets import DIT_PRESETS, PRESETS
from jaxdiff.models.pretrained import load_pretrained
from jaxdiff.models.resample import Downsample, Upsample
from jaxdiff.models.resnet import ResBlock
from jaxdiff.models.unet import UNet

__all__ = [
    "DIT_PRESETS",
    "PRESETS",
    "AttentionBlock",
    "DiT",
    "DiTBlock",
    "Downsample",
    "OneHotInput",
    "ResBlock",
    "TokenTransformer",
    "UNet",
    "Upsample",
    "load_openai_unet",
    "load_pretrained",
    "nnx_model_fn",
    "sinusoidal_embedding",
]
