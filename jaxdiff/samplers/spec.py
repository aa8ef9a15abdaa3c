"""What a sampler is: a step function over per-step inputs read from a time grid.

Every sampler of the table (`jaxdiff.samplers.table.SAMPLERS`) is a `SamplerSpec`; the one
chain runner (`jaxdiff.samplers.runner`) builds its inputs, then scans its step:

    step(denoiser, x, state, inp, key, opts) -> (x, state)

``x`` is the state x_t of the chain, always in the process's own scale (x_t = alpha_t x_0 +
sigma_t eps), so that wrappers acting on x (inpainting, SDEdit) serve every sampler;
``state`` is the sampler's memory (DPM-Solver's previous prediction, ...); ``inp`` is the
`StepInput` of this step: the grid points it goes from (``s``) and to (``t``), the variance
sigma^2_{s|t} of the forward transition between them, and sampler-specific arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import flax.struct
import jax.numpy as jnp

from jaxdiff.samplers import grids
from jaxdiff.samplers.grids import Points

Array = Any


@flax.struct.dataclass
class StepInput:
  """Per-step inputs (leading axis: steps): from ``s`` to ``t``, sigma^2_{s|t}, extras."""

  s: Points
  t: Points
  transition_variance: Array
  extra: dict


def pair_inputs(process: Any, times: Array, *, ends_clean: bool,
                extra: Optional[dict] = None) -> StepInput:
  """Steps between consecutive points of ``times`` (and then to the clean end)."""
  pts = grids.points(process, times, ends_clean=ends_clean)
  variances = process.transition_variances(times)
  if ends_clean:
    variances = jnp.concatenate([variances, pts.sigma[-2:-1] ** 2])
  first = Points(*(a[:-1] for a in (pts.t, pts.alpha, pts.sigma, pts.log_snr)))
  second = Points(*(a[1:] for a in (pts.t, pts.alpha, pts.sigma, pts.log_snr)))
  return StepInput(s=first, t=second, transition_variance=variances, extra=extra or {})


def no_state(x: Array) -> Array:
  """The state of a memoryless sampler: an empty array."""
  del x
  return jnp.zeros((0,))


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
  """A table entry (see the module docstring).

  step: the step function. grid: the default grid kind (`grids.GRID_KINDS`; "discrete" on a
  `Schedule` becomes its strided timesteps, other processes use ``continuous_grid``, or the
  process's own ``default_grid`` when it has one, unless ``own_grid``: the grid is part of
  the method, as EDM's Karras levels and NCSN's geometric ladder are).
  ends_clean: the chain's last step goes to the clean end (it returns the data prediction).
  endpoint: the steps go between grid points that include the end t_min, so N steps take
  N + 1 points (otherwise N points: to the clean end, or one step from each point).
  options: the sampler's options and their defaults (floats are traced, so sweeping them
  does not recompile; ints, bools and strings are static; the runner adds the static
  "num_steps", the length of the whole grid). default_steps: steps when num_steps is None
  (None: the process's own N, every timestep of a `Schedule` or an SDE's N, else
  ``continuous_steps``).
  inputs: builds the `StepInput`s from (process, times, opts) when the pair steps of
  `pair_inputs` are not what the step reads. init_state: the state at the start.
  finalize: ``finalize(denoiser, x, state, last_input, opts) -> x`` after the last step.
  validate: ``validate(process, opts, num_steps)`` raises ValueError on options that cannot
  run (called before compiling, with concrete option values). default_t_min:
  ``default_t_min(process, num_steps)``, the end of continuous grids when the option t_min
  is not given (default: the process's t_min).
  stochastic: draws noise in its steps (unless its float option ``noise_option`` is 0:
  DDIM's eta, EDM's S_churn). markov: its state is x alone, so RePaint's jumps
  back may interleave its steps. nfe: model evaluations for ``num_steps`` steps.
  """

  name: str
  step: Callable[..., tuple[Array, Array]]
  summary: str
  grid: str = "discrete"
  continuous_grid: str = "time_uniform"
  own_grid: bool = False
  ends_clean: bool = True
  endpoint: bool = False
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  default_steps: Optional[int] = None
  continuous_steps: int = 1000
  inputs: Optional[Callable[..., StepInput]] = None
  init_state: Callable[[Array], Array] = no_state
  finalize: Optional[Callable[..., Array]] = None
  validate: Optional[Callable[[Any, Mapping[str, Any], int], None]] = None
  default_t_min: Optional[Callable[[Any, int], Any]] = None
  stochastic: bool = False
  noise_option: Optional[str] = None
  markov: bool = True
  nfe: Callable[[int, Mapping[str, Any]], int] = lambda steps, opts: steps


def batch_time(t: Array, x: Array) -> Array:
  """A grid point's time broadcast to the [B] vector a model takes (its dtype kept)."""
  return jnp.full((x.shape[0],), t, jnp.asarray(t).dtype)


def scalar(c: Array, x: Array) -> Array:
  """A per-step coefficient as a scalar of x's dtype."""
  return jnp.asarray(c).astype(x.dtype)
