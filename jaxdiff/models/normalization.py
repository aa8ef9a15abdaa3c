"""Group normalization (Wu & He 2018), as used in every DDPM / ADM block."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def group_norm(x: jax.Array, *, num_groups: int, name: str | None = None) -> jax.Array:
  """GroupNorm over the channel axis with ``min(num_groups, channels)`` groups.

  Ho et al. 2020 (Appendix B) replace weight normalization with group
  normalization. Computed and returned in float32 whatever ``x``'s dtype (as
  ADM's ``GroupNorm32``), so that the element-wise operations that follow stay
  in float32 until the next convolution casts to the compute dtype. Must be
  called inside a compact Flax module; the affine parameters live there.

  Args:
    x: activations ``[..., C]``.
    num_groups: requested number of groups; capped at ``C``, which it must divide.
    name: optional submodule name.

  Returns:
    Normalized float32 activations, same shape as ``x``.
  """
  channels = x.shape[-1]
  groups = min(num_groups, channels)
  if groups < 1 or channels % groups:
    raise ValueError(
        f"num_groups={num_groups} (capped at {groups}) must be >= 1 and divide the "
        f"{channels} channels"
    )
  norm = nn.GroupNorm(
      num_groups=groups, epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
      name=name,
  )
  return norm(x.astype(jnp.float32))
