"""Flax NNX models as jaxdiff model functions that compile once per shape."""

import dataclasses
from typing import Any

import jax
from flax import nnx


@dataclasses.dataclass(frozen=True)
class _MergedCall:
  """Calls the NNX model rebuilt from `graphdef` and a state pytree; equal (and hashing
  equal) for equal graph definitions, so jit caches key on the graph, not the object."""

  graphdef: Any

  def __call__(self, state: nnx.State, *args: Any, **kwargs: Any) -> Any:
    return nnx.merge(self.graphdef, state)(*args, **kwargs)


def nnx_model_fn(model: nnx.Module) -> jax.tree_util.Partial:
  """`model_fn(x_t, t, ...)` of an NNX module, as a pytree whose leaves are its state.

  `nnx.split` separates the module into its static graph definition and its state (the
  parameters and any other variables); the returned `jax.tree_util.Partial` holds the
  state as traced leaves and rebuilds the module with `nnx.merge` inside the traced
  function. A sampler or loss jitted over it therefore compiles once per input shape
  and reuses that program when the parameters change (pass `nnx_model_fn(model)` again
  after an update, or build it from `nnx.split` yourself). The model is called as
  `model(x_t, t, *rest)`; changes it makes to its own state during the call are not
  written back.
  """
  graphdef, state = nnx.split(model)
  return jax.tree_util.Partial(_MergedCall(graphdef), state)
