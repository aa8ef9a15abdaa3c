"""The one chain runner: every sampler of the table, every grid, wrapper and process.

``sample(denoiser, rng, shape, sampler=..., ...)`` checks its input in Python (one-line
ValueErrors before anything compiles), then runs one jitted function: it builds the time
grid and the per-step inputs from the denoiser's process, draws or takes the starting state,
and scans the sampler's step (`jaxdiff.samplers.spec`) over the steps in one
``jax.lax.scan``, with inpainting (replacement and RePaint's jumps back), ILVR's low-pass
replacement (`jaxdiff.samplers.ilvr`), SDEdit's late start and trajectories as wrappers
around any step.

Compilation: the denoiser is a pytree whose arrays (the parameters of a
``jax.tree_util.Partial`` model, the process's coefficients), the float options (eta, snr,
guidance scales inside the model, ...) and explicit time grids are traced, so a new parameter
set, schedule or option value reuses the compiled program; shapes, the sampler, the step count
and the string / int options are static. Sharding: a batch-sharded ``x_T`` (or
``known`` / ``start``) runs the chain sharded over its devices. Everything here also works
inside a caller's own ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import schedules
from jaxdiff.samplers import checks, grids, ilvr, inpainting, table
from jaxdiff.samplers.spec import SamplerSpec, pair_inputs

Array = Any


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything static about a run (part of the compilation key)."""

  sampler: str
  num_steps: int               # steps of the whole grid
  grid: str                    # grid kind, when neither timesteps nor times are given
  timesteps: Optional[tuple[int, ...]]
  explicit_times: bool
  static_options: tuple[tuple[str, Any], ...]
  shape: tuple[int, ...]
  trajectory_stride: Optional[int]
  inpaint: bool
  jump_length: int
  resample_count: int
  start_steps: Optional[int]   # SDEdit: only the last this many steps run
  ilvr_factor: Optional[int] = None  # ILVR: the low-pass block size N

  @property
  def spec(self) -> SamplerSpec:
    return table.SAMPLERS[self.sampler]

  def transitions(self) -> tuple[np.ndarray, np.ndarray]:
    """Step indices and jump-back flags of the scan (static)."""
    run = self.start_steps or self.num_steps
    steps, up = inpainting.repaint_transitions(run, jump_length=self.jump_length,
                                               resample_count=self.resample_count)
    return steps + (self.num_steps - run), up


def run_chain(step_fn: Any, carry: Any, xs: Any, *,
              trajectory_stride: Optional[int] = None) -> tuple[Any, Optional[Array]]:
  """Applies ``carry <- step_fn(carry, xs[n])`` for every n in one ``lax.scan``.

  With ``trajectory_stride`` k it also returns the states x (``carry[0]``) at the start,
  after every k-th step and at the end, ``[1 + ceil(L / k), *x.shape]``, written in place
  into a buffer carried by the scan (memory of the kept states only).
  """
  if trajectory_stride is None:
    carry, _ = jax.lax.scan(lambda c, inp: (step_fn(c, inp), None), carry, xs)
    return carry, None
  length = jax.tree_util.tree_leaves(xs)[0].shape[0]
  x0 = carry[0]
  frames = jnp.zeros((1 + -(-length // trajectory_stride),) + x0.shape, x0.dtype).at[0].set(x0)

  def body(c: tuple[Any, Array], inp: tuple[Array, Any]) -> tuple[tuple[Any, Array], None]:
    inner, frames = c
    n, step_inputs = inp
    inner = step_fn(inner, step_inputs)
    # Step n + 1 lands in frame ceil((n + 1) / k); a frame's last write is step k * frame.
    frame = (n + trajectory_stride) // trajectory_stride
    return (inner, jax.lax.dynamic_update_index_in_dim(frames, inner[0], frame, 0)), None

  (carry, frames), _ = jax.lax.scan(body, (carry, frames), (jnp.arange(length), xs))
  return carry, frames


def _times(process: Any, plan: Plan, arrays: Mapping[str, Any],
           opts: Mapping[str, Any]) -> Array:
  """The decreasing grid of process times the plan visits."""
  if plan.explicit_times:
    return arrays["times"]
  if plan.timesteps is not None:
    return jnp.asarray(plan.timesteps[::-1], jnp.int32)
  t_min = opts.get("t_min")
  # A sampler that ends with a step to the clean end stops one point before a grid end that
  # is clean itself (t = 0 of a flow), so that its N steps are N evaluations.
  drop_end = (plan.spec.ends_clean and t_min is None and plan.grid in grids.TIME_KINDS
              and getattr(process, "clean_t_min", False))
  if t_min is None and plan.spec.default_t_min is not None:
    t_min = plan.spec.default_t_min(process, plan.num_steps)
  times = grids.default_times(process, plan.grid, plan.num_steps + plan.spec.endpoint + drop_end,
                              t_min=t_min, rho=opts.get("rho", 7.0))
  return times[:-1] if drop_end else times


def _step_inputs(process: Any, plan: Plan, times: Array, opts: Mapping[str, Any]) -> Any:
  spec = plan.spec
  if spec.inputs is not None:
    return spec.inputs(process, times, opts)
  return pair_inputs(process, times, ends_clean=spec.ends_clean)


def _initial_state(plan: Plan, inputs: Any, arrays: Mapping[str, Any], process: Any,
                   first: int, key: Array) -> Array:
  """x at the first step: x_T (or a prior draw), SDEdit's noised start, known pixels noised."""
  key_init, key_known = jax.random.split(key)
  start = jax.tree_util.tree_map(lambda a: a[first], inputs.s)
  if arrays.get("start") is not None:
    x = inpainting.known_at(start, arrays["start"], key_init)
  elif arrays.get("x_T") is not None:
    x = arrays["x_T"]
  else:
    x = process.prior_sampling(key_init, plan.shape).astype(jnp.result_type(float))
  if plan.inpaint:
    x = jnp.where(arrays["mask"], inpainting.known_at(start, arrays["known"], key_known), x)
  return x


def _check_output(denoiser: Any, shape: tuple[int, ...], integer_times: bool) -> None:
  """Raises ValueError (at trace time, from shapes only) unless the model's output fits x."""
  base = getattr(denoiser, "base", denoiser)
  x = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
  t = jax.ShapeDtypeStruct(shape[:1], jnp.int32 if integer_times else jnp.result_type(float))
  out = jax.eval_shape(base.model_fn, x, t) if hasattr(base, "model_fn") else jax.eval_shape(
      denoiser, x, t).x0
  learned = getattr(base, "learned_variance", False)
  expected = shape[:-1] + (shape[-1] * (2 if learned else 1),)
  if tuple(out.shape) != expected:
    what = "with 2C channels (learned variance)" if learned else "shaped like x"
    raise ValueError(f"model_fn must return an array {what} {expected}, got "
                     f"{tuple(out.shape)}")


@functools.partial(jax.jit, static_argnames=("plan",))
def _execute(denoiser: Any, rng: Array, arrays: Mapping[str, Any], *,
             plan: Plan) -> tuple[Array, Optional[Array]]:
  spec, process = plan.spec, denoiser.process
  opts = {**dict(plan.static_options), **arrays["options"], "num_steps": plan.num_steps}
  times = _times(process, plan, arrays, opts)
  _check_output(denoiser, plan.shape, jnp.issubdtype(times.dtype, jnp.integer))
  inputs = _step_inputs(process, plan, times, opts)
  steps, up = plan.transitions()
  key_init, key_steps = jax.random.split(rng)
  x = _initial_state(plan, inputs, arrays, process, int(steps[0]), key_init)

  def transition(carry: tuple[Array, Any], xs: tuple[Array, Array, Array]) -> tuple[Array, Any]:
    k, jump, key = xs
    inp = jax.tree_util.tree_map(lambda a: a[k], inputs)
    key_step, key_known = jax.random.split(key)

    def down(c: tuple[Array, Any]) -> tuple[Array, Any]:
      x, state = spec.step(denoiser, c[0], c[1], inp, key_step, opts)
      if plan.inpaint:
        x = jnp.where(arrays["mask"], inpainting.known_at(inp.t, arrays["known"], key_known), x)
      if plan.ilvr_factor is not None:
        reference_t = inpainting.known_at(inp.t, arrays["reference"],
                                          jax.random.fold_in(key_known, 1))
        x = ilvr.replace_low_pass(x, reference_t, plan.ilvr_factor)
      return x, state

    def back(c: tuple[Array, Any]) -> tuple[Array, Any]:
      return inpainting.jump_back(c[0], inp.s, inp.t, inp.transition_variance, key_step), c[1]

    return jax.lax.cond(jump, back, down, carry) if plan.resample_count > 1 else down(carry)

  xs = (jnp.asarray(steps), jnp.asarray(up), jax.random.split(key_steps, len(steps)))
  (x, state), frames = run_chain(transition, (x, spec.init_state(x)), xs,
                                 trajectory_stride=plan.trajectory_stride)
  if spec.finalize is not None:
    last = jax.tree_util.tree_map(lambda a: a[int(steps[-1])], inputs)
    x = spec.finalize(denoiser, x, state, last, opts)
  if plan.inpaint:
    x = jnp.where(arrays["mask"], arrays["known"].astype(x.dtype), x)
  if plan.ilvr_factor is not None:
    x = ilvr.replace_low_pass(x, arrays["reference"], plan.ilvr_factor)
  return x, frames


def _default_steps(spec: SamplerSpec, process: Any) -> int:
  if spec.default_steps is not None and isinstance(process, schedules.Schedule):
    return spec.default_steps
  if spec.default_steps is None:
    return getattr(process, "N", spec.continuous_steps)
  return spec.continuous_steps


def _continuous_default(spec: SamplerSpec, process: Any) -> str:
  """The sampler's grid on a continuous process: the process's own default where it has one
  (a flow's uniform t), unless the sampler's grid is part of its method (`SamplerSpec`)."""
  own = getattr(process, "default_grid", None)
  return spec.continuous_grid if own is None or spec.own_grid else own


def _grid(spec: SamplerSpec, process: Any, *, num_steps: Optional[int], grid: Optional[str],
          timesteps: Optional[Sequence[int]], times: Optional[Array]
          ) -> tuple[int, str, Optional[tuple[int, ...]]]:
  """(steps, grid kind, discrete timesteps) of a request; ValueError on a bad one."""
  given = [name for name, v in (("num_steps", num_steps), ("timesteps", timesteps),
                                ("times", times)) if v is not None]
  if len(given) > 1:
    raise ValueError(f"give at most one of num_steps, timesteps, times (or sigmas); got {given}")
  discrete = isinstance(process, schedules.Schedule)
  kind = grid or (spec.grid if discrete else _continuous_default(spec, process))
  grids.check_kind(kind)
  points = lambda n: n - spec.endpoint
  if timesteps is not None:
    if not discrete:
      raise ValueError(f"timesteps= needs a discrete Schedule, not a {type(process).__name__}; "
                       "pass times= (the process's own time) instead")
    kept = grids.strided_timesteps(process.num_timesteps, num_steps=None, timesteps=timesteps)
    return points(len(kept)), kind, tuple(int(k) for k in kept)
  if times is not None:
    grids.check_times(times, process)
    return points(int(jnp.shape(times)[0])), kind, None
  steps = _default_steps(spec, process) if num_steps is None else num_steps
  limit = process.num_timesteps - spec.endpoint if discrete and kind == "discrete" else None
  minimum = 2 if kind == "karras" else 1
  return grids.check_num_steps(steps, limit=limit, minimum=minimum), kind, None


def _check_fit(spec: SamplerSpec, denoiser: Any, plan_kind: str, integer_times: bool,
               opts: Mapping[str, Any]) -> None:
  """Raises ValueError when the sampler cannot run this denoiser as asked."""
  if denoiser.prediction == "mean" and not (spec.name in ("ddpm", "ddim") and integer_times):
    raise ValueError(f"prediction 'mean' (the posterior mean of x_(t-1)) is defined at the "
                     f"schedule's own timesteps only; sampler {spec.name!r} with the "
                     f"{plan_kind!r} grid needs another prediction (use ddpm or ddim)")
  if str(opts.get("variance", "")).startswith("learned") and not denoiser.learned_variance:
    raise ValueError(f"variance={opts['variance']!r} needs a denoiser with "
                     "learned_variance=True (a model with 2C output channels)")



def _inputs(shape: Optional[Sequence[int]], x_T: Optional[Array], known: Optional[Array],
            mask: Optional[Array], start: Optional[Array]) -> tuple[tuple[int, ...], dict]:
  """The batch shape and the traced arrays of a request, checked against each other."""
  if (known is None) != (mask is None):
    raise ValueError("inpainting needs both known= (the image) and mask= (nonzero = known)")
  given = next((a for a in (x_T, known, start) if a is not None), None)
  if shape is None and given is None:
    raise ValueError("give shape=, or x_T=, known= or start= to take the shape from")
  shape = checks.check_shape(jnp.shape(given) if shape is None else shape)
  for name, value in (("x_T", x_T), ("known", known), ("start", start)):
    checks.check_array(name, value, shape)
  arrays = {"x_T": x_T, "start": start, "known": known}
  if mask is not None:
    arrays["mask"] = inpainting.check_mask(mask, shape)
  return shape, arrays


def _deterministic(spec: SamplerSpec, traced: Mapping[str, Any]) -> bool:
  """Whether the run draws no noise (its noise option is concretely 0)."""
  if spec.noise_option is None:
    return not spec.stochastic
  return checks.concrete_float(traced[spec.noise_option]) == 0.0


def prepare(denoiser: Any, rng: Any, shape: Optional[Sequence[int]] = None, *,
            sampler: str = "ddim", num_steps: Optional[int] = None, grid: Optional[str] = None,
            timesteps: Optional[Sequence[int]] = None, times: Optional[Array] = None,
            sigmas: Optional[Array] = None, x_T: Optional[Array] = None,
            known: Optional[Array] = None, mask: Optional[Array] = None,
            jump_length: int = 1, resample_count: int = 1, start: Optional[Array] = None,
            strength: Optional[float] = None, trajectory_stride: Optional[int] = None,
            reference: Optional[Array] = None, ilvr_factor: Optional[int] = None,
            **options: Any) -> tuple[Plan, dict, Array, int]:
  """Checks a request of :func:`sample` and returns (plan, traced arrays, key, evaluations)."""
  checks.check_denoiser(denoiser)
  if sampler not in table.SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(table.SAMPLERS)}")
  spec, process = table.SAMPLERS[sampler], denoiser.process
  static, traced = checks.split_options(sampler, {**spec.options, "t_min": None}, options)
  if sigmas is not None:
    times = grids.sigmas_to_times(process, sigmas)
  steps, kind, kept = _grid(spec, process, num_steps=num_steps, grid=grid,
                            timesteps=timesteps, times=times)
  integer_times = kept is not None or (times is None and kind == "discrete") or (
      times is not None and jnp.issubdtype(jnp.result_type(times), jnp.integer))
  shape, arrays = _inputs(shape, x_T, known, mask, start)
  if reference is not None or ilvr_factor is not None:
    ilvr_factor = ilvr.check_reference(reference, ilvr_factor, shape)
    arrays["reference"] = reference
  opts = {**dict(static), **{k: v for k, v in traced.items() if grids.is_concrete(v)}}
  _check_fit(spec, denoiser, kind, integer_times, opts)
  if spec.validate is not None:
    spec.validate(process, opts, steps)
  run = steps
  if start is not None:
    value = checks.concrete_float(strength if strength is not None else 1.0)
    if value is None or not 0.0 < value <= 1.0:
      raise ValueError(f"strength must be a float in (0, 1], got {strength!r}")
    run = max(1, math.ceil(value * steps))
  jump_length = checks.check_positive_int("jump_length", jump_length)
  resample_count = checks.check_positive_int("resample_count", resample_count)
  if jump_length > run:
    raise ValueError(f"jump_length={jump_length} exceeds the chain's {run} steps")
  if resample_count > 1 and (known is None or not spec.markov):
    raise ValueError(f"RePaint resampling (resample_count={resample_count}) needs inpainting "
                     f"(known=, mask=) and a Markov sampler (ddpm, ddim, edm_heun), not "
                     f"{sampler!r}")
  if rng is None:
    if (x_T is None or known is not None or start is not None or reference is not None
        or not _deterministic(spec, traced)):
      raise ValueError(f"rng may be None only for a deterministic run of {sampler!r} from a "
                       "given x_T (e.g. ddim with eta = 0)")
    rng = jax.random.PRNGKey(0)
  checks.check_key(rng)
  stride = None if trajectory_stride is None else checks.check_positive_int(
      "trajectory_stride", trajectory_stride)
  arrays.update(times=times, options=traced)
  plan = Plan(sampler=sampler, num_steps=steps, grid=kind, timesteps=kept,
              explicit_times=times is not None, static_options=static, shape=shape,
              trajectory_stride=stride, inpaint=known is not None, jump_length=jump_length,
              resample_count=resample_count, start_steps=None if start is None else run,
              ilvr_factor=ilvr_factor)
  downs = int(np.sum(~plan.transitions()[1]))
  return plan, arrays, rng, spec.nfe(downs, {**dict(static), **traced})


def run(denoiser: Any, rng: Any, shape: Optional[Sequence[int]] = None,
        **kwargs: Any) -> tuple[Array, Optional[Array], int]:
  """:func:`sample`, also returning the trajectory (or None) and the number of model
  evaluations."""
  plan, arrays, rng, nfe = prepare(denoiser, rng, shape, **kwargs)
  x, frames = _execute(denoiser, rng, arrays, plan=plan)
  return x, frames, nfe


def sample(denoiser: Any, rng: Any, shape: Optional[Sequence[int]] = None, *,
           sampler: str = "ddim", **kwargs: Any) -> Array | tuple[Array, Array]:
  """Samples with any sampler of `jaxdiff.samplers.SAMPLERS` on any process.

  Args:
    denoiser: a `jaxdiff.denoisers.make_denoiser(model_fn, process, prediction=...)`,
      possibly wrapped (`clip`, `map_x0`, `classifier_guidance`).
    rng: a jax.random key (None only for a deterministic run from a given x_T).
    shape: [B, ...] of the samples (or taken from x_T / known / start).
    sampler: a name of the table (`jaxdiff.samplers.SAMPLERS`; see the README).
    num_steps: steps; default: the sampler's (all T timesteps of a Schedule for ddpm and pc).
    grid: the grid kind ("discrete", "time_uniform", "time_quadratic", "logSNR", "karras");
      default: the sampler's.
    timesteps: ascending int timesteps of a Schedule to visit instead (DESIGN.md).
    times / sigmas: an explicit decreasing grid of process times, or of EDM noise levels
      sigma / alpha, instead.
    x_T: the starting state (default: a draw of the process's prior).
    known, mask: inpainting: the image and where it is known (nonzero); with
      ``resample_count > 1`` and ``jump_length``, RePaint's resampling.
    start, strength: SDEdit (Meng et al. 2022): noise ``start`` to the grid point at
      ``strength`` of the chain and run only its last ceil(strength * N) steps.
    reference, ilvr_factor: ILVR (Choi et al. 2021): after every step replace the low-pass
      content (block means of ilvr_factor x ilvr_factor pixels) of x by that of the
      reference noised to the step's level; the output's is the reference's exactly.
    trajectory_stride: also return the states every this many steps.
    **options: the sampler's options (``jaxdiff.samplers.SAMPLERS[name].options``) and
      ``t_min``, the end of continuous grids (default: the process's).

  Returns:
    The samples, or ``(samples, trajectory)`` with ``trajectory_stride``.

  Raises:
    ValueError: on any input that cannot run (one line, before compiling).
  """
  x, frames, _ = run(denoiser, rng, shape, sampler=sampler, **kwargs)
  return x if frames is None else (x, frames)
