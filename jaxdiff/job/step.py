"""The training step as pure functions: TrainState, optimizer, EMA, one jittable step.

The recipe is Ho et al. (2020), App. B: Adam with a linear learning-rate warmup,
global-norm gradient clipping, and an exponential moving average (EMA) of the parameters
for sampling. Class-conditional models drop labels to the null label with probability
`label_dropout` for classifier-free guidance (Ho & Salimans, 2022).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxdiff import ema
from jaxdiff.config import builders
from jaxdiff.config.objectives import LossFn

# objective_fn(params, images, rng, step) -> per-example loss [B] (an autoencoder run's).
ObjectiveFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]

# Batch entries of an image-to-image task (jaxdiff.data.tasks), passed to the model by name.
CONDITIONING_KEYS = ("condition", "aug_level")


@struct.dataclass
class TrainState:
  """Everything a step updates. `apply_fn` and `tx` are static (not pytree leaves)."""

  step: jax.Array            # int32 scalar: the number of updates applied so far.
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  apply_fn: Callable[..., jax.Array] = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  posthoc_emas: tuple[Any, ...] = ()  # Power-function EMAs (jaxdiff.ema), one per sigma_rel.


def learning_rate_schedule(*, learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then constant."""
  if warmup_steps <= 0:
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)


def make_optimizer(*, learning_rate: float, warmup_steps: int, grad_clip: float,
                   optimizer: str = "adam", weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
  """Global-norm clipping (skipped when grad_clip <= 0), then Adam or AdamW with warmup."""
  schedule = learning_rate_schedule(learning_rate=learning_rate, warmup_steps=warmup_steps)
  if optimizer == "adam":
    if weight_decay:
      raise ValueError(f"weight_decay={weight_decay} needs optimizer='adamw', not 'adam'.")
    base = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  elif optimizer == "adamw":
    base = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  else:
    raise ValueError(f"optimizer={optimizer!r} is not 'adam' or 'adamw'.")
  if grad_clip <= 0:
    return base
  return optax.chain(optax.clip_by_global_norm(grad_clip), base)


def init_train_state(rng: jax.Array, *, model: nn.Module, tx: optax.GradientTransformation,
                     image_shape: tuple[int, int, int], posthoc_profiles: int = 0) -> TrainState:
  """Initialises parameters on a dummy [1, H, W, C] batch; the EMA and the
  `posthoc_profiles` power-function EMAs start equal to them."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  y = None if getattr(model, "num_classes", None) is None else jnp.zeros((1,), jnp.int32)
  params = model.init({"params": rng}, x, t, y=y, train=False)["params"]
  ema_params = jax.tree.map(jnp.copy, params)  # Own buffers: the step donates both trees.
  posthoc = tuple(jax.tree.map(jnp.copy, params) for _ in range(posthoc_profiles))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=tx.init(params), apply_fn=model.apply, tx=tx, posthoc_emas=posthoc)


def ema_update(ema_params: Any, params: Any, *, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def drop_labels(rng: jax.Array, labels: jax.Array, *, null_label: int,
                drop_prob: float) -> jax.Array:
  """Replaces each label by `null_label` with probability `drop_prob` (CFG training)."""
  drop = jax.random.bernoulli(rng, drop_prob, labels.shape)
  return jnp.where(drop, null_label, labels)


def tree_all_finite(tree: Any) -> jax.Array:
  """A bool scalar: every floating-point leaf of `tree` is free of NaN and infinity."""
  checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def _model_labels(batch: dict[str, jax.Array], rng: jax.Array, *, num_classes: int | None,
                  label_dropout: float) -> jax.Array | None:
  """The model's `y`: the batch's caption tokens (their dropout already applied, see
  `jaxdiff.job.inputs`), else its class labels dropped to the null label with probability
  `label_dropout` (classifier-free guidance), else None (an unconditional model)."""
  if "caption" in batch:
    return batch["caption"]
  if num_classes is None:
    return None
  if "label" not in batch:
    raise ValueError(f"num_classes={num_classes} (class-conditional) but the batch has "
                     f"no 'label': keys {sorted(batch)}.")
  if label_dropout <= 0:
    return batch["label"]
  return drop_labels(rng, batch["label"], null_label=num_classes, drop_prob=label_dropout)


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               loss_fn: LossFn | None, ema_decay: float, label_dropout: float = 0.0,
               num_classes: int | None = None, proceed: jax.Array | None = None,
               objective_fn: ObjectiveFn | None = None,
               posthoc_gammas: tuple[float, ...] = ()
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer update on `batch` ({"image": [B, H, W, C] in [-1, 1], "label": [B]}; an
  image-to-image task's "condition" and "aug_level" go to the model as keyword arguments).

  A batch with a "caption" (caption tokens [B, L], see `jaxdiff.job.inputs`) gives
  the model that as `y`, with its classifier-free-guidance dropout already applied. With
  `objective_fn` (an autoencoder run) the loss is `objective_fn(params, batch["image"],
  rng, step)` instead of `loss_fn` of the model.

  `rng` is the run's base key; this step's randomness is `fold_in(rng, state.step)`, so a
  resumed run repeats the same draws. The loss is the batch mean of `loss_fn`'s per-example
  losses. The step is finite when the loss, the gradient norm and every leaf of the updated
  state (parameters, EMA parameters, optimizer state) are finite. If it is not (or if the
  bool `proceed` is given and False) the state is returned unchanged: a caller that sees
  `metrics["finite"]` False must stop (see jaxdiff.job.trainer). The
  power-function EMAs of `state.posthoc_emas` follow their `posthoc_gammas`
  (`jaxdiff.ema.power_ema_update`).

  Returns the new state and metrics {"loss", "grad_norm", "finite"}.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  noise_rng, dropout_rng, label_rng = jax.random.split(step_rng, 3)
  labels = _model_labels(batch, label_rng, num_classes=num_classes,
                         label_dropout=label_dropout)
  conditioning = {key: batch[key] for key in CONDITIONING_KEYS if key in batch}

  if hasattr(loss_fn, "at_step"):  # A curriculum (objectives.CurriculumLoss).
    loss_fn = loss_fn.at_step(state.step)

  def objective(params: Any) -> jax.Array:
    if objective_fn is not None:
      return jnp.mean(objective_fn(params, batch["image"], noise_rng, state.step))
    def model_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
      return state.apply_fn({"params": params}, x_t, t, y=labels, train=True,
                            rngs={"dropout": dropout_rng}, **conditioning)
    return jnp.mean(loss_fn(model_fn, batch["image"], noise_rng))

  loss, grads = jax.value_and_grad(objective)(state.params)
  grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  updated = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                          ema_params=ema_update(state.ema_params, params, decay=ema_decay),
                          posthoc_emas=ema.power_ema_update(state.posthoc_emas, params,
                                                            step=state.step + 1,
                                                            gammas=posthoc_gammas))
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & tree_all_finite(
      (updated.params, updated.ema_params, updated.opt_state))
  keep = finite if proceed is None else finite & proceed
  # Computed once, before the selects: fused into each leaf's select instead, the
  # whole-model reductions behind it would be repeated per leaf (minutes of XLA compile).
  keep = jax.lax.optimization_barrier(keep)
  new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), updated, state)
  return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


@struct.dataclass
class MetricSums:
  """Running sums of a run's step metrics since the last log, kept on the device.

  `first_non_finite` is the index of the first step that was not finite (-1 while every
  step was), and `bad_loss` / `bad_grad_norm` are that step's values: the training loop
  fetches these only when it logs or saves, so steps run without waiting for the host.
  """

  loss: jax.Array
  grad_norm: jax.Array
  count: jax.Array
  first_non_finite: jax.Array
  bad_loss: jax.Array
  bad_grad_norm: jax.Array

  @classmethod
  def zeros(cls) -> "MetricSums":
    """Empty sums: no step counted, no non-finite step seen."""
    zero = jnp.zeros((), jnp.float32)
    return cls(loss=zero, grad_norm=zero, count=jnp.zeros((), jnp.int32),
               first_non_finite=jnp.full((), -1, jnp.int32), bad_loss=zero,
               bad_grad_norm=zero)


def accumulating_train_step(state: TrainState, sums: MetricSums, batch: dict[str, jax.Array],
                            rng: jax.Array, **step_options: Any
                            ) -> tuple[TrainState, MetricSums]:
  """`train_step`, adding its loss and gradient norm to `sums`, frozen after a bad step.

  Once a step is not finite no later step updates the state, so the state stays the last
  finite one and `sums.first_non_finite` names the step that failed.
  """
  proceed = sums.first_non_finite < 0
  step = state.step
  state, metrics = train_step(state, batch, rng, proceed=proceed, **step_options)
  counted = proceed & metrics["finite"]
  failed = proceed & ~metrics["finite"]
  loss, grad_norm = (metrics[name].astype(jnp.float32) for name in ("loss", "grad_norm"))
  return state, MetricSums(
      loss=sums.loss + jnp.where(counted, loss, 0.0),
      grad_norm=sums.grad_norm + jnp.where(counted, grad_norm, 0.0),
      count=sums.count + counted.astype(jnp.int32),
      first_non_finite=jnp.where(failed, step, sums.first_non_finite),
      bad_loss=jnp.where(failed, loss, sums.bad_loss),
      bad_grad_norm=jnp.where(failed, grad_norm, sums.bad_grad_norm))


def build_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of `config.train` (see `make_optimizer`)."""
  return make_optimizer(**builders.optimizer_options(config.train))


def abstract_train_state(config: ml_collections.ConfigDict) -> TrainState:
  """The TrainState that `config` trains, with jax.ShapeDtypeStruct leaves (no compute)."""
  model, tx = builders.build_model(config), build_optimizer(config)
  return jax.eval_shape(
      lambda rng: init_train_state(rng, model=model, tx=tx,
                                   image_shape=builders.model_input_shape(config),
                                   posthoc_profiles=len(config.train.posthoc_sigma_rels)),
      jax.random.PRNGKey(0))


def posthoc_gammas(config: ml_collections.ConfigDict) -> tuple[float, ...]:
  """The exponents gamma of `config.train.posthoc_sigma_rels` (`jaxdiff.ema`)."""
  return tuple(ema.sigma_rel_to_gamma(s) for s in config.train.posthoc_sigma_rels)
