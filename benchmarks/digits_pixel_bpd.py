"""Bits/dim of the digits' test split under independent per-pixel level histograms of the
train split (add-one smoothing): the baseline beside the D3PM / masked bounds."""
import numpy as np
from jaxdiff import images
from jaxdiff.config import schema
from jaxdiff.discrete import levels
from jaxdiff.evaluation.datasets import load_images

config = schema.load_config_file("configs/digits_d3pm.py")
tok = {s: np.asarray(levels.uint8_to_tokens(images.to_uint8(load_images(config.data, split=s)[0]), 17))
       for s in ("train", "test")}
counts = np.stack([(tok["train"] == k).sum(0) for k in range(17)], -1) + 1.0
logp = np.log2(counts / counts.sum(-1, keepdims=True))
test = tok["test"]
nll = -np.take_along_axis(logp[None], test[..., None], -1)[..., 0]
print(f"{len(test)} test images: {nll.mean():.3f} bits/dim (uniform: {np.log2(17):.3f})")
