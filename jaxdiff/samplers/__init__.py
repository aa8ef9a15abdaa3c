"""Discrete-time samplers: DDPM, DDIM and inversion, guidance, inpainting, SDEdit.

Every sampler is a pure function that runs its whole chain as one ``jax.lax.scan`` over
one step function inside one ``jax.jit``; it calls ``model_fn(x_t, t)`` with int32 [B]
*original* timesteps of the schedule passed in, also when it runs on a respaced chain.

Compilation: a second call with the same shapes and options reuses the compiled program
when ``model_fn`` is the same Python object, or a ``jax.tree_util.Partial`` of the same
function whose array arguments may change::

    model_fn = jax.tree_util.Partial(apply_eps, params)   # apply_eps(params, x, t)
    x = samplers.ddpm(model_fn, schedule, rng, (16, 32, 32, 3))   # compiles
    x = samplers.ddpm(jax.tree_util.Partial(apply_eps, new_params), schedule, rng2,
                      (16, 32, 32, 3))                             # reuses it

Arrays inside a Partial are traced arguments; other leaves (functions, Python numbers)
are static, so functions are matched by identity: a new lambda, closure or
``functools.partial`` per call recompiles, with closed-over arrays baked in as constants
(and kept alive by jax's compilation cache). DDIM's ``eta`` and the guidance scales and
labels are traced, so sweeping them does not recompile; shapes, ``num_steps``,
``timesteps`` and the string/bool options are static. ``num_steps``/``timesteps`` of the
ancestral samplers respace the schedule with NumPy, so there the schedule must be
concrete (a closure constant, not a traced argument of an outer jit).

Options shared by the samplers: ``prediction`` ("eps" | "x0" | "v" | "mean"),
``variance`` (see :func:`jaxdiff.diffusion.p_mean_variance`), ``clip_denoised`` (static
clip of the predicted x_0 to [-1, 1]), ``denoised_fn`` (e.g. :func:`dynamic_threshold`)
and ``cond_fn`` (:func:`classifier_guidance`).

Sharding: pass ``x_T`` (or ``x_known`` / ``x0``) sharded over its batch axis and the
chain runs sharded over those devices, giving the same samples as on one device.
"""

from jaxdiff.samplers.ancestral import ddpm
from jaxdiff.samplers.ddim import ddim, ddim_invert
from jaxdiff.samplers.guidance import classifier_free_guidance, classifier_guidance
from jaxdiff.samplers.inpainting import inpaint
from jaxdiff.samplers.sdedit import sdedit
from jaxdiff.samplers.thresholding import dynamic_threshold

__all__ = [
    "classifier_free_guidance",
    "classifier_guidance",
    "ddim",
    "ddim_invert",
    "ddpm",
    "dynamic_threshold",
    "inpaint",
    "sdedit",
]
