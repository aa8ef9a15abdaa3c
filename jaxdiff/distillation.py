"""Progressive distillation (Salimans & Ho 2022): one student DDIM step matches two teacher steps.

A round distills a teacher that samples with 2N deterministic DDIM steps (eta = 0) into a
student with N steps, on the "nested" grid of `jaxdiff.samplers.grids` (u = i / N mapped to
the process's times, then the clean end), so that the student's step from t to t'' spans the
teacher's steps t -> t' -> t''. For x_0 from the data and z_t = alpha_t x_0 + sigma_t eps
(Salimans & Ho 2022, Algorithm 2):

    z_t'  = alpha_t' x_hat(z_t) + sigma_t' / sigma_t (z_t - alpha_t x_hat(z_t)),
    z_t'' = alpha_t'' x_hat(z_t') + sigma_t'' / sigma_t' (z_t' - alpha_t' x_hat(z_t')),
    x~    = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

with the teacher's x_hat, and the student minimizes w(lambda_t) ||x~ - x_hat_student(z_t)||^2
with the truncated-SNR weight w = max(alpha_t^2 / sigma_t^2, 1) (Salimans & Ho 2022, Sec. 4,
"truncated SNR"). At the last step t'' is the clean end and x~ = x_hat(z_t'). A student that
is initialised from the teacher becomes the next round's teacher: N -> N / 2 -> ... -> 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxdiff.processes import broadcast_to_x
from jaxdiff.samplers import grids
from jaxdiff.samplers.ddim import ddim_update

Array = Any


def check_round(*, teacher_steps: int, student_steps: int) -> None:
  """Raises ValueError unless the student takes half the teacher's steps (a positive int)."""
  if not (isinstance(student_steps, int) and student_steps >= 1
          and teacher_steps == 2 * student_steps):
    raise ValueError(f"a progressive distillation round halves the steps: the student's "
                     f"num_steps={student_steps!r} must be half the teacher's "
                     f"{teacher_steps!r}")


def teacher_points(process: Any, student_steps: int) -> grids.Points:
  """The teacher's 2N + 1 points (the nested grid of 2N steps and the clean end)."""
  times = grids.default_times(process, "nested", 2 * student_steps)
  return grids.points(process, times, ends_clean=True)


def _ddim_to(denoiser: Any, z: Array, time: Array, alpha: Array, sigma: Array) -> Array:
  """The eta = 0 DDIM step of ``denoiser`` from (z, time) to the point (alpha, sigma)."""
  out = denoiser(z, time)
  zero = jnp.zeros_like(z)
  return ddim_update(out.x0, out.eps, broadcast_to_x(alpha, z), broadcast_to_x(sigma, z),
                     zero, zero)


def two_step_target(teacher: Any, z: Array, pts: grids.Points, index: Array) -> Array:
  """x~ of Algorithm 2 (module docstring) for z at teacher point ``index`` [B] (even), after
  the teacher's steps index -> index + 1 -> index + 2; not differentiated."""
  at = lambda a, k: a[k].astype(z.dtype)
  z_mid = _ddim_to(teacher, z, pts.t[index], at(pts.alpha, index + 1), at(pts.sigma, index + 1))
  z_end = _ddim_to(teacher, z_mid, pts.t[index + 1], at(pts.alpha, index + 2),
                   at(pts.sigma, index + 2))
  ratio = at(pts.sigma, index + 2) / at(pts.sigma, index)
  denom = at(pts.alpha, index + 2) - ratio * at(pts.alpha, index)
  target = (z_end - broadcast_to_x(ratio, z) * z) / broadcast_to_x(denom, z)
  return jax.lax.stop_gradient(target)


def distillation_loss(student: Any, teacher: Any, x0: Array, rng: Array, *,
                      student_steps: int) -> Array:
  """The per-example loss of a round (module docstring), mean over pixels, [B].

  ``student`` and ``teacher`` are denoisers (`jaxdiff.denoisers.make_denoiser`) on the same
  process; the student's step i of N is drawn uniformly.
  """
  pts = teacher_points(teacher.process, student_steps)
  key_i, key_eps = jax.random.split(rng)
  index = 2 * jax.random.randint(key_i, (x0.shape[0],), 0, student_steps)
  eps = jax.random.normal(key_eps, x0.shape, x0.dtype)
  alpha, sigma = pts.alpha[index].astype(x0.dtype), pts.sigma[index].astype(x0.dtype)
  z = broadcast_to_x(alpha, x0) * x0 + broadcast_to_x(sigma, x0) * eps
  target = two_step_target(teacher, z, pts, index)
  pred = student(z, pts.t[index]).x0
  weight = jnp.maximum(alpha**2 / sigma**2, 1.0)
  return weight * jnp.mean(jnp.reshape((target - pred) ** 2, (x0.shape[0], -1)), axis=1)
