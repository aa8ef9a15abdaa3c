"""One denoiser: any model output, normalized once into the data and noise predictions.

For a process x_t = alpha_t x_0 + sigma_t eps (`jaxdiff.processes`), a model may predict

- "eps":   the noise eps (Ho et al. 2020, eq. 11);
- "x0":    the data x_0;
- "v":     v = alpha_t eps - sigma_t x_0 (Salimans & Ho 2022, Sec. 4 and App. D);
- "score": grad_x log p_t(x_t) = -eps / sigma_t (Song et al. 2021, eq. 28; Tweedie);
- "velocity": dx_t / dt = alpha'(t) x_0 + sigma'(t) eps, the velocity of flow matching
           (Lipman et al. 2023, eq. 20-21; Liu et al. 2023): eps - x_0 on the linear
           interpolant of `jaxdiff.processes.FlowProcess`, and on any other process the
           derivative in its own time;
- "mean":  the mean of x_{t-1} under the posterior of a discrete `Schedule`
           (Ho et al. 2020, eq. 7), at integer timesteps only.

`make_denoiser(model_fn, process, prediction=...)` returns a `Denoiser`: called as
`denoiser(x_t, t)` with the process's time t [B], it returns `Denoised(x0, eps,
variance_values)`, the two predictions consistent with x_t = alpha x0 + sigma eps (and the
learned-variance channels of a 2C-channel model, Nichol & Dhariwal 2021, Sec. 3.1). Every
sampler of `jaxdiff.samplers` takes a denoiser (in the spirit of Karras et al. 2022's D(x;
sigma) and of Salimans & Ho's one model-output normalization).

Wrappers take a denoiser and return one, so they compose with every sampler:

- `clip(denoiser)`: x0 clipped to [-1, 1] (Ho et al. 2020's sampling code);
- `map_x0(denoiser, fn)`: any map of x0, e.g. dynamic thresholding (Saharia et al. 2022);
- `classifier_guidance(denoiser, cond_fn)`: eps - sigma_t * cond_fn(x_t, t), the noise
  shift of Dhariwal & Nichol 2021, Algorithm 2 (their Algorithm 1, a shift of the ancestral
  mean, is the `mean_shift_fn` option of the ddpm sampler).

Classifier-free guidance combines model outputs linearly, before this normalization:
`jaxdiff.samplers.classifier_free_guidance` turns a conditional model into a `model_fn`.

Every denoiser and wrapper is a pytree whose arrays (the parameters inside a
`jax.tree_util.Partial` model_fn, the process's coefficients) are traced by the samplers'
jit: a new parameter set reuses the compiled sampler.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.processes import broadcast_to_x

Array = Any
ModelFn = Callable[[Array, Array], Array]

PREDICTIONS = ("eps", "x0", "v", "score", "mean", "velocity")


class Denoised(NamedTuple):
  """A denoiser's output at (x_t, t): x0 and eps with x_t = alpha_t x0 + sigma_t eps, and the
  variance channels of a learned-variance model (None otherwise)."""

  x0: Array
  eps: Array
  variance_values: Optional[Array] = None


def _is_array(leaf: Any) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


@jax.tree_util.register_pytree_node_class
class Traceable:
  """A callable carried through ``jax.jit`` as a pytree: array leaves traced, the rest static.

  Functions are compared by identity: a function defined once, or a
  ``jax.tree_util.Partial`` of it rebuilt with new arrays, reuses a compiled sampler; a new
  lambda or closure per call compiles again, with the arrays it closes over baked in.
  """

  def __init__(self, fn: Callable[..., Any]):
    self.fn = fn

  def __call__(self, *args: Any, **kwargs: Any) -> Any:
    return self.fn(*args, **kwargs)

  def tree_flatten(self) -> tuple[list[Any], tuple[Any, ...]]:
    leaves, treedef = jax.tree_util.tree_flatten(self.fn)
    is_array = tuple(_is_array(leaf) for leaf in leaves)
    arrays = [leaf for leaf, a in zip(leaves, is_array) if a]
    statics = tuple(None if a else leaf for leaf, a in zip(leaves, is_array))
    return arrays, (treedef, is_array, statics)

  @classmethod
  def tree_unflatten(cls, aux: tuple[Any, ...], arrays: list[Any]) -> "Traceable":
    treedef, is_array, statics = aux
    it = iter(arrays)
    leaves = [next(it) if a else s for a, s in zip(is_array, statics)]
    return cls(jax.tree_util.tree_unflatten(treedef, leaves))


def traceable(fn: Callable[..., Any], *, name: str) -> Traceable:
  """Wraps ``fn`` for a jitted sampler after checking it is callable and its static part
  hashable (jit keys its cache on it).

  Raises:
    ValueError: if ``fn`` is not callable or a non-array leaf of it cannot be hashed.
  """
  if isinstance(fn, Traceable):
    return fn
  if not callable(fn):
    raise ValueError(f"{name} must be callable, got {type(fn).__name__}: {fn!r}")
  wrapped = Traceable(fn)
  try:
    hash(wrapped.tree_flatten()[1])
  except TypeError as e:
    raise ValueError(
        f"{name} has a non-array part that cannot be hashed ({e}); pass arrays as leaves "
        "of a jax.tree_util.Partial, or use a hashable callable") from None
  return wrapped


def check_prediction(prediction: str) -> None:
  """Raises ValueError unless ``prediction`` names a parameterization of PREDICTIONS."""
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")


def coefficients(process: Any, x: Array, t: Array) -> tuple[Array, Array]:
  """(alpha_t, sigma_t) of the process, broadcast against x and in its dtype."""
  return tuple(broadcast_to_x(c, x).astype(x.dtype) for c in process.marginal_coeffs(t))


def x0_eps_from_output(process: Any, prediction: str, out: Array, x: Array,
                       t: Array) -> tuple[Array, Array]:
  """(x0, eps) from a model output in the given parameterization (module docstring).

  With x = alpha x0 + sigma eps: eps gives x0 = (x - sigma eps) / alpha; x0 gives eps =
  (x - alpha x0) / sigma; v = alpha eps - sigma x0 gives x0 = (alpha x - sigma v) /
  (alpha^2 + sigma^2) and eps = (sigma x + alpha v) / (alpha^2 + sigma^2), which is
  Salimans & Ho's alpha x - sigma v for variance-preserving processes; score gives
  eps = -sigma score; the posterior mean of a discrete chain is inverted for x0. The
  velocity u = alpha' x0 + sigma' eps with x = alpha x0 + sigma eps gives x0 = (sigma' x -
  sigma u) / det and eps = (alpha u - alpha' x) / det, det = alpha sigma' - sigma alpha'
  (= 1 on the linear interpolant: x0 = x - t u, eps = x + (1 - t) u; positive on every
  process whose log-SNR decreases), finite at both ends of a flow.
  """
  alpha, sigma = coefficients(process, x, t)
  if prediction == "velocity":
    dalpha, dsigma = (broadcast_to_x(c, x).astype(x.dtype)
                      for c in process.coeff_derivatives(t))
    det = alpha * dsigma - sigma * dalpha
    return (dsigma * x - sigma * out) / det, (alpha * out - dalpha * x) / det
  if prediction == "v":
    norm = alpha**2 + sigma**2
    return (alpha * x - sigma * out) / norm, (sigma * x + alpha * out) / norm
  if prediction in ("x0", "mean"):
    x0 = out if prediction == "x0" else _x0_from_posterior_mean(process, out, x, t)
    return x0, (x - alpha * x0) / sigma
  eps = -sigma * out if prediction == "score" else out
  return (x - sigma * eps) / alpha, eps


def _x0_from_posterior_mean(schedule: Any, mean: Array, x: Array, t: Array) -> Array:
  """Inverts the posterior mean coef1_t x0 + coef2_t x_t of Ho et al. 2020, eq. 7."""
  coef1 = broadcast_to_x(schedule.posterior_mean_coef1[t], x).astype(x.dtype)
  coef2 = broadcast_to_x(schedule.posterior_mean_coef2[t], x).astype(x.dtype)
  return (mean - coef2 * x) / coef1


@flax.struct.dataclass
class Denoiser:
  """``denoiser(x_t, t) -> Denoised`` for a model in any parameterization (module docstring).

  Build with :func:`make_denoiser`. ``learned_variance``: the model outputs 2C channels, the
  prediction and then the variance values (Nichol & Dhariwal 2021, Sec. 3.1).
  """

  model_fn: Traceable
  process: Any
  prediction: str = flax.struct.field(pytree_node=False, default="eps")
  learned_variance: bool = flax.struct.field(pytree_node=False, default=False)

  def __call__(self, x: Array, t: Array) -> Denoised:
    out = self.model_fn(x, t)
    values = None
    if self.learned_variance:
      out, values = out[..., :x.shape[-1]], out[..., x.shape[-1]:]
    x0, eps = x0_eps_from_output(self.process, self.prediction, out, x, t)
    return Denoised(x0, eps, values)


def make_denoiser(model_fn: ModelFn, process: Any, *, prediction: str = "eps",
                  learned_variance: bool = False) -> Denoiser:
  """The denoiser of ``model_fn(x_t, t) -> output`` on ``process`` (module docstring).

  Args:
    model_fn: the model, called with the process's time t [B] (int32 timesteps for a
      discrete schedule's own samplers, floats for the continuous ones); pass it as a
      ``jax.tree_util.Partial(apply_fn, params)`` so that new params reuse compiled samplers.
    process: a `jaxdiff.processes` noise process: a `Schedule`, an SDE, `EDMProcess`,
      `FlowProcess`.
    prediction: one of PREDICTIONS; "mean" needs a discrete `Schedule`.
    learned_variance: the model outputs 2C channels (prediction, variance values).

  Raises:
    ValueError: on an unknown prediction, a non-callable model_fn, a process that is not a
      noise process, or "mean" on a process without a discrete posterior.
  """
  check_prediction(prediction)
  if not all(hasattr(process, name) for name in ("marginal_coeffs", "log_snr",
                                                  "t_from_log_snr")):
    raise ValueError(f"process must be a noise process (a Schedule, an SDE of jaxdiff.sde, "
                     f"an EDMProcess or a FlowProcess), got {type(process).__name__}")
  if prediction == "mean" and not hasattr(process, "posterior_mean_coef1"):
    raise ValueError(f"prediction 'mean' (the posterior mean of x_(t-1)) needs a discrete "
                     f"Schedule, not a {type(process).__name__}")
  return Denoiser(model_fn=traceable(model_fn, name="model_fn"), process=process,
                  prediction=prediction, learned_variance=bool(learned_variance))


def velocity(denoiser: Any, x: Array, t: Array) -> Array:
  """The probability-flow velocity alpha'(t) x0_hat + sigma'(t) eps_hat of a denoiser at
  (x_t, t) [B] (Lipman et al. 2023, eq. 8 and 20): for any denoiser equal to the ODE's
  f x - g^2 score / 2 (Song et al. 2021, eq. 13), and finite where alpha = 0 or sigma = 0."""
  out = denoiser(x, t)
  dalpha, dsigma = (broadcast_to_x(c, x).astype(x.dtype)
                    for c in denoiser.process.coeff_derivatives(t))
  return dalpha * out.x0 + dsigma * out.eps


def is_denoiser(obj: Any) -> bool:
  """Whether ``obj`` is a `Denoiser` or a wrapped one."""
  return isinstance(obj, (Denoiser, _Wrapper))


class _Wrapper:
  """A denoiser wrapper: it keeps the wrapped denoiser's process and parameterization."""

  @property
  def process(self) -> Any:
    return self.inner.process

  @property
  def prediction(self) -> str:
    return self.inner.prediction

  @property
  def learned_variance(self) -> bool:
    return self.inner.learned_variance

  @property
  def base(self) -> Denoiser:
    """The innermost `Denoiser`."""
    return self.inner.base if isinstance(self.inner, _Wrapper) else self.inner


@flax.struct.dataclass
class Wrapped(_Wrapper):
  """``inner`` whose output passes through ``rule(fn, out, x, t, alpha, sigma) -> Denoised``
  (``fn``: the user's part, e.g. an x0 map or a classifier's gradient)."""

  inner: Any
  fn: Traceable
  rule: Callable[..., Denoised] = flax.struct.field(pytree_node=False)

  def __call__(self, x: Array, t: Array) -> Denoised:
    alpha, sigma = coefficients(self.process, x, t)
    return self.rule(self.fn, self.inner(x, t), x, t, alpha, sigma)


def _solved(numerator: Array, scale: Array, fallback: Array) -> Array:
  """numerator / scale, or ``fallback`` where the scale is 0 (alpha at a flow's t = 1, sigma
  at its t = 0: the other prediction is then x itself and this one stays as it was)."""
  return jnp.where(scale != 0, numerator / jnp.where(scale != 0, scale, 1), fallback)


def _mapped_x0(fn: Traceable, out: Denoised, x: Array, t: Array, alpha: Array,
               sigma: Array) -> Denoised:
  """x0 -> fn(x0), eps recomputed from it."""
  del t
  x0 = fn(out.x0)
  return Denoised(x0, _solved(x - alpha * x0, sigma, out.eps), out.variance_values)


def _shifted_eps(cond_fn: Traceable, out: Denoised, x: Array, t: Array, alpha: Array,
                 sigma: Array) -> Denoised:
  """eps -> eps - sigma cond_fn(x, t), x0 recomputed from it."""
  eps = out.eps - sigma * cond_fn(x, t)
  return Denoised(_solved(x - sigma * eps, alpha, out.x0), eps, out.variance_values)


def _clip_unit(x0: Array) -> Array:
  return jnp.clip(x0, -1.0, 1.0)


def map_x0(denoiser: Any, fn: Callable[[Array], Array]) -> Wrapped:
  """Applies ``fn`` to the predicted x0 (eps follows), e.g. ``jax.tree_util.Partial(
  jaxdiff.samplers.dynamic_threshold, percentile=99.5)`` (Saharia et al. 2022, Sec. 2.3)."""
  return Wrapped(inner=denoiser, fn=traceable(fn, name="x0 map"), rule=_mapped_x0)


def clip(denoiser: Any) -> Wrapped:
  """x0 clipped to the data range [-1, 1], eps recomputed (Ho et al. 2020's sampler)."""
  return Wrapped(inner=denoiser, fn=Traceable(_clip_unit), rule=_mapped_x0)


def classifier_guidance(denoiser: Any, cond_fn: ModelFn) -> Wrapped:
  """Dhariwal & Nichol 2021, Algorithm 2: eps - sqrt(1 - alpha-bar_t) s grad log p(y | x_t),
  on any process as eps - sigma_t cond_fn(x_t, t), where ``cond_fn`` is the scaled gradient
  of `jaxdiff.samplers.classifier_guidance`."""
  return Wrapped(inner=denoiser, fn=traceable(cond_fn, name="cond_fn"), rule=_shifted_eps)
