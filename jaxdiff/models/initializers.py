"""Weight initializers of the DDPM reference code (Ho et al. 2020)."""

import flax.linen as nn

# DDPM's ``default_init(scale=1.0)``: variance scaling, fan_avg, uniform.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

# DDPM's ``init_scale=0.``: the last layer of each residual branch and of the
# network starts at zero, so every block starts as the identity.
zero_init = nn.initializers.zeros_init()
