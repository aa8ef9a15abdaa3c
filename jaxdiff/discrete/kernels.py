"""Transition kernels of discrete-state diffusion over K categories (Austin et al. 2021).

The forward chain is q(x_t | x_{t-1}) = Cat(x_t; x_{t-1} Q_t) with row-stochastic one-step
matrices Q_t ([Q_t]_ij = q(x_t = j | x_{t-1} = i)) and cumulative products Qbar_t = Q_0 Q_1
... Q_t, so q(x_t | x_0) = Cat(x_t; x_0 Qbar_t) (D3PM, eq. 1-3). Time is 0-indexed as for the
Gaussian chains: t in [0, T), step t = 0 is the papers' Q_1.

Kernels (`KERNELS`):

- "uniform" (multinomial diffusion, Hoogeboom et al. 2021; D3PM App. A.2.1):
  Q_t = (1 - beta_t) I + beta_t / K 1 1^T, Qbar_t = abar_t I + (1 - abar_t) / K 1 1^T with
  abar_t = prod_{s <= t} (1 - beta_s).
- "absorbing" (D3PM App. A.2.2; the masking process of BERT / MaskGIT): state m absorbs,
  Q_t = (1 - beta_t) I + beta_t 1 e_m^T, Qbar_t = abar_t I + (1 - abar_t) 1 e_m^T.
- "gaussian" (D3PM App. A.2.1, ordinal data): [Q_t]_ij proportional to
  exp(-4 (i - j)^2 / ((K - 1)^2 beta_t)) off the diagonal, normalized by the sum over
  n = -(K-1) .. K-1 of exp(-4 n^2 / ((K - 1)^2 beta_t)), the diagonal taking the rest.
- "embedding" (D3PM Sec. 3.2, token-embedding distance): Q_t = expm(beta_t R) for the rate
  matrix R = A - diag(A 1) of the symmetrized k-nearest-neighbour graph A of token
  embeddings; all Q_t commute, so Qbar_t = expm((sum_{s <= t} beta_s) R) (one eigh).

"uniform" and "absorbing" store only log abar_t and are applied in closed form in log space
(no K x K matrix, exact for abar_t far below float32's range); "gaussian" and "embedding"
store Q_t and Qbar_t as [T, K, K] arrays. Everything is computed in float64 with NumPy and
stored in ``dtype`` (float32 by default).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = Any

KERNELS = ("uniform", "absorbing", "gaussian", "embedding")
STRUCTURED = ("uniform", "absorbing")
BETA_SCHEDULES = ("cosine", "jsd", "linear")


@flax.struct.dataclass
class Kernel:
  """A D3PM transition kernel (a pytree; see the module docstring).

  betas: [T] the per-step rates beta_t. log_alpha_bar: [T] log prod_{s <= t} (1 - beta_s)
  (the structured kernels). onestep / cumulative: [T, K, K] Q_t and Qbar_t (the dense
  kernels; None for the structured ones). kind, num_classes (K, every state including an
  absorbing one) and absorbing_state (m, or -1) are static.
  """

  betas: Array
  log_alpha_bar: Array
  onestep: Optional[Array]
  cumulative: Optional[Array]
  kind: str = flax.struct.field(pytree_node=False)
  num_classes: int = flax.struct.field(pytree_node=False)
  absorbing_state: int = flax.struct.field(pytree_node=False, default=-1)

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def make_betas(schedule: str, num_timesteps: int, *, start: float = 0.02,
               stop: float = 1.0) -> np.ndarray:
  """float64 beta_t [T] of a D3PM schedule (Austin et al. 2021, Sec. 4 / App. B).

  "cosine": 1 - abar_{t+1} / abar_t with abar(s) = cos((s + 0.008) / 1.008 * pi / 2),
  s = t / T, capped at 0.999 (Hoogeboom et al. 2021's schedule for multinomial diffusion);
  "jsd": beta_t = 1 / (T - t), i.e. 1/T, 1/(T-1), ..., 1 (the absorbing kernel's schedule,
  whose abar_t = 1 - (t + 1) / T falls linearly to exactly 0); "linear": evenly from
  ``start`` to ``stop`` (the discretized-Gaussian kernel's).
  """
  if schedule not in BETA_SCHEDULES:
    raise ValueError(f"unknown beta schedule {schedule!r}; expected one of {BETA_SCHEDULES}")
  if not isinstance(num_timesteps, int) or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")
  if schedule == "cosine":
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = np.cos((steps + 0.008) / 1.008 * np.pi / 2)
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
  if schedule == "jsd":
    return 1.0 / np.linspace(num_timesteps, 1.0, num_timesteps, dtype=np.float64)
  if not 0.0 < start <= stop:
    raise ValueError(f"linear betas need 0 < start <= stop, got start={start}, stop={stop}")
  return np.linspace(start, stop, num_timesteps, dtype=np.float64)


def gaussian_matrices(betas: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [T, K, K] one-step matrices of the discretized Gaussian kernel (module
  docstring; D3PM App. A.2.1)."""
  k = num_classes
  offsets = np.arange(-(k - 1), k, dtype=np.float64)
  logits = -4.0 * offsets[None, :] ** 2 / ((k - 1) ** 2 * betas[:, None])
  weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)   # [T, 2K - 1]
  index = np.arange(k)
  distance = index[None, :] - index[:, None] + (k - 1)                    # [K, K] -> offset
  mats = weights[:, distance]
  mats[:, index, index] = 0.0
  mats[:, index, index] = 1.0 - mats.sum(axis=2)
  return mats


def embedding_rate_matrix(embeddings: np.ndarray, *, num_neighbors: int) -> np.ndarray:
  """float64 rate matrix R [K, K] of the k-nearest-neighbour graph of token embeddings
  (D3PM Sec. 3.2): A_ij = 1 / (2k) when j is among i's k nearest neighbours in Euclidean
  distance or i among j's (A symmetrized), R = A - diag(A 1); rows of R sum to 0."""
  emb = np.asarray(embeddings, dtype=np.float64)
  if emb.ndim != 2 or not 1 <= num_neighbors < emb.shape[0]:
    raise ValueError(f"embeddings must be [K, d] and num_neighbors in [1, K), got shape "
                     f"{emb.shape} and num_neighbors={num_neighbors}")
  distances = np.sum((emb[:, None, :] - emb[None, :, :]) ** 2, axis=-1)
  np.fill_diagonal(distances, np.inf)
  nearest = np.argsort(distances, axis=1, kind="stable")[:, :num_neighbors]
  graph = np.zeros_like(distances)
  graph[np.arange(len(emb))[:, None], nearest] = 1.0
  adjacency = (graph + graph.T) / (2.0 * num_neighbors)
  return adjacency - np.diag(adjacency.sum(axis=1))


def _expm_symmetric(rate: np.ndarray, scales: np.ndarray) -> np.ndarray:
  """expm(s R) [S, K, K] for every s of ``scales`` and a symmetric R (eigendecomposition)."""
  values, vectors = np.linalg.eigh(rate)
  return np.einsum("ik,sk,jk->sij", vectors, np.exp(scales[:, None] * values[None, :]),
                   vectors)


def make_kernel(kind: str, num_classes: int, betas: Any, *, dtype: Any = jnp.float32,
                absorbing_state: Optional[int] = None, embeddings: Optional[Any] = None,
                num_neighbors: int = 4) -> Kernel:
  """The kernel ``kind`` (`KERNELS`) over ``num_classes`` states with rates ``betas`` [T].

  "absorbing" absorbs into ``absorbing_state`` (default the last state, K - 1: an extra mask
  category); "embedding" needs ``embeddings`` [K, d] and ``num_neighbors``. Raises
  ValueError on an unknown kind or bad value (one line).
  """
  if kind not in KERNELS:
    raise ValueError(f"unknown kernel {kind!r}; expected one of {KERNELS}")
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size < 1 or not np.all((betas > 0) & (betas <= 1)):
    raise ValueError(f"betas must be a non-empty [T] array in (0, 1], got shape "
                     f"{betas.shape}")
  state = -1
  if kind == "absorbing":
    state = num_classes - 1 if absorbing_state is None else absorbing_state
    if not 0 <= state < num_classes:
      raise ValueError(f"absorbing_state={absorbing_state} is not a state of 0..{num_classes - 1}")
  with np.errstate(divide="ignore"):
    log_alpha_bar = np.cumsum(np.log1p(-betas))
  onestep = cumulative = None
  if kind == "gaussian":
    onestep = gaussian_matrices(betas, num_classes)
    cumulative = np.empty_like(onestep)
    cumulative[0] = onestep[0]
    for t in range(1, len(betas)):
      cumulative[t] = cumulative[t - 1] @ onestep[t]
  elif kind == "embedding":
    if embeddings is None or np.shape(embeddings)[0] != num_classes:
      raise ValueError(f"the embedding kernel needs embeddings [K={num_classes}, d], got "
                       f"{None if embeddings is None else np.shape(embeddings)}")
    rate = embedding_rate_matrix(embeddings, num_neighbors=num_neighbors)
    onestep, cumulative = (_expm_symmetric(rate, s) for s in (betas, np.cumsum(betas)))
  as_dtype = lambda a: None if a is None else jnp.asarray(a, dtype=dtype)
  return Kernel(betas=as_dtype(betas), log_alpha_bar=as_dtype(log_alpha_bar),
                onestep=as_dtype(onestep), cumulative=as_dtype(cumulative), kind=kind,
                num_classes=num_classes, absorbing_state=state)


def log1mexp(a: Array) -> Array:
  """log(1 - exp(a)) for a <= 0, accurate near 0 and near -inf (Maechler 2012)."""
  return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def safe_log(p: Array) -> Array:
  """log p with p floored at the dtype's smallest normal number (so log 0 stays finite)."""
  return jnp.log(jnp.maximum(p, jnp.finfo(jnp.result_type(p)).tiny))


def _per_example(c: Array, x: Array) -> Array:
  """A per-example [B] value broadcast against [B, ..., K]."""
  return jnp.reshape(c, jnp.shape(c) + (1,) * (x.ndim - 1))


def _dense_rows(mats: Array, t: Array, log_probs: Array) -> Array:
  """log(p M_t) for probability rows p = exp(log_probs) [B, ..., K] and mats [T, K, K]."""
  rows = jnp.einsum("b...i,bij->b...j", jnp.exp(log_probs), mats[t].astype(log_probs.dtype))
  return safe_log(rows)


def log_cumulative(kernel: Kernel, log_probs: Array, t: Array) -> Array:
  """log(p Qbar_t) for rows p = exp(log_probs) [B, ..., K] (any non-negative weights, e.g.
  a one-hot x_0 or a model's prediction) and timesteps t [B].

  Uniform: log(abar p_i + (1 - abar) / K sum p); absorbing: log(abar p_i + [i = m]
  (1 - abar) sum p), both in log space (logaddexp, log1mexp) so that abar_t -> 0 or -> 1
  loses nothing.
  """
  if kernel.kind not in STRUCTURED:
    return _dense_rows(kernel.cumulative, t, log_probs)
  log_abar = _per_example(kernel.log_alpha_bar[t], log_probs).astype(log_probs.dtype)
  total = jax.scipy.special.logsumexp(log_probs, axis=-1, keepdims=True)
  spread = log1mexp(log_abar) + total
  kept = log_abar + log_probs
  if kernel.kind == "uniform":
    return jnp.logaddexp(kept, spread - math.log(kernel.num_classes))
  is_absorbing = jnp.arange(kernel.num_classes) == kernel.absorbing_state
  return jnp.where(is_absorbing, jnp.logaddexp(kept, spread), kept)


def log_onestep_column(kernel: Kernel, x_t: Array, t: Array) -> Array:
  """log [Q_t]_{i, x_t} over the previous state i, [B, ..., K] for tokens x_t [B, ...]:
  the likelihood q(x_t | x_{t-1} = i) of the observed x_t (D3PM eq. 3's x_t Q_t^T)."""
  k = kernel.num_classes
  onehot = jax.nn.one_hot(x_t, k, dtype=bool)
  if kernel.kind not in STRUCTURED:
    columns = jax.vmap(lambda q, x: jnp.swapaxes(q, 0, 1)[x])(kernel.onestep[t], x_t)
    return safe_log(columns)
  beta = _per_example(kernel.betas[t], onehot)
  if kernel.kind == "uniform":
    return jnp.where(onehot, jnp.log1p(-beta * (1.0 - 1.0 / k)), jnp.log(beta / k))
  masked = (x_t == kernel.absorbing_state)[..., None]
  from_absorbing = jnp.arange(k) == kernel.absorbing_state
  column_m = jnp.where(from_absorbing, 0.0, jnp.log(beta))
  column_j = jnp.where(onehot, jnp.log1p(-beta), -jnp.inf)
  return jnp.where(masked, column_m, column_j)


def stationary_log_probs(kernel: Kernel) -> Array:
  """log of the limit distribution [K] the chain mixes to (the prior p(x_T)): uniform for
  the uniform, Gaussian and embedding kernels (doubly stochastic), e_m for the absorbing
  one, floored at the smallest normal number (`safe_log`)."""
  k = kernel.num_classes
  if kernel.kind == "absorbing":
    probs = (jnp.arange(k) == kernel.absorbing_state).astype(kernel.betas.dtype)
  else:
    probs = jnp.full((k,), 1.0 / k, kernel.betas.dtype)
  return safe_log(probs)


def transition_matrix(kernel: Kernel, t: int) -> Array:
  """Q_t [K, K], materialized (for inspection and tests; the chain never builds it)."""
  column = lambda j: log_onestep_column(kernel, jnp.full((1,), j), jnp.full((1,), t))[0]
  return jnp.exp(jax.vmap(column)(jnp.arange(kernel.num_classes))).T


def cumulative_matrix(kernel: Kernel, t: int) -> Array:
  """Qbar_t [K, K], materialized: row i is log_cumulative of the one-hot e_i."""
  log_eye = jnp.log(jnp.eye(kernel.num_classes, dtype=kernel.betas.dtype))
  return jnp.exp(log_cumulative(kernel, log_eye, jnp.full((kernel.num_classes,), t)))
