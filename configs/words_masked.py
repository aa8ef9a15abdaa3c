"""Masked diffusion (MD4 / MDLM) on the words of Debian's word list: the text demo.

Data: the lowercase a-z words of /usr/share/dict/words (`apt-get install -y wamerican`) of at
most 16 letters, 60564 in the train split, each 16 tokens (letters a..z = 0..25, then the end
token 26) stored as a 4x4 grid (`jaxdiff.data.words`). The network is a small transformer
over the 16 tokens (`jaxdiff.models.TokenTransformer`: 4 adaLN-Zero blocks of width 128) with
28 input tokens (27 and the mask) and 27 logits per token. Sampling unmasks in 16 steps;
`sample.py` writes the words, one a line, to a .txt, and
`python -m jaxdiff.evaluate --metrics words` scores them against the word list.
"""

import ml_collections

from jaxdiff.config.schema import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config(model="transformer")
  config.model.update(num_tokens=28, out_channels=27, hidden_size=128, depth=4, num_heads=4)
  config.diffusion.update(objective="masked", num_categories=27, masking="linear")
  config.data.update(source="words", name="words", word_list="/usr/share/dict/words",
                     image_size=4, channels=1)
  config.train.update(batch_size=128, num_steps=3000, learning_rate=1e-3, warmup_steps=200,
                      ema_decay=0.995, log_every=100, checkpoint_every=1000,
                      keep_checkpoints=2)
  config.sample.update(sampler="unmask", num_samples=64, num_steps=16)
  config.eval.update(metrics=("bpd",))
  return config
