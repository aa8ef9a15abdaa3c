"""Discrete-state diffusion: D3PM (Austin et al. 2021) with uniform (multinomial, Hoogeboom
et al. 2021), absorbing, discretized-Gaussian and token-embedding kernels, and masked
diffusion in continuous time (MD4, Shi et al. 2024; MDLM, Sahoo et al. 2024).

Data are integer tokens [B, ...] in [0, K); models map (x_t, t) to logits [B, ..., K] of x_0.

- `kernels`: `make_kernel`, `make_betas`, Q_t / Qbar_t (`transition_matrix`,
  `cumulative_matrix`), log-space closed forms for the structured kernels.
- `posterior`: q(x_t | x_0) (`q_log_probs`, `q_sample`), the posterior
  (`q_posterior_logits`) and the x0-parameterized reverse (`p_logits`).
- `losses`: `vb_terms_bpd`, `prior_bpd`, `calc_bpd` (the whole bound), `d3pm_loss`
  (hybrid L_vb + lambda CE).
- `masked`: `MaskingSchedule` alpha(t), `masked_loss` (the weighted cross-entropy ELBO,
  continuous or T-step), `masked_bpd`.
- `samplers`: `d3pm_sample` (ancestral), `unmask_sample` (MD4's unmasking).
"""

from jaxdiff.discrete.kernels import (BETA_SCHEDULES, KERNELS, Kernel, cumulative_matrix,
                                      embedding_rate_matrix, make_betas, make_kernel,
                                      stationary_log_probs, transition_matrix)
from jaxdiff.discrete.losses import (D3PM_LOSS_TYPES, calc_bpd, categorical_kl,
                                     cross_entropy_bpd, d3pm_loss, prior_bpd, vb_terms_bpd)
from jaxdiff.discrete.masked import (MASKING_SCHEDULES, MaskingSchedule, make_masking_schedule,
                                     mask_tokens, masked_bpd, masked_cross_entropy,
                                     masked_loss)
from jaxdiff.discrete.posterior import (onehot_log_probs, p_logits, q_log_probs,
                                        q_posterior_logits, q_sample)
from jaxdiff.discrete.samplers import d3pm_sample, unmask_sample

__all__ = [
    "BETA_SCHEDULES", "D3PM_LOSS_TYPES", "KERNELS", "Kernel", "MASKING_SCHEDULES",
    "MaskingSchedule", "calc_bpd", "categorical_kl", "cross_entropy_bpd",
    "cumulative_matrix", "d3pm_loss", "d3pm_sample", "embedding_rate_matrix", "make_betas",
    "make_kernel", "make_masking_schedule", "mask_tokens", "masked_bpd",
    "masked_cross_entropy", "masked_loss", "onehot_log_probs", "p_logits", "prior_bpd",
    "q_log_probs", "q_posterior_logits", "q_sample", "stationary_log_probs",
    "transition_matrix", "unmask_sample", "vb_terms_bpd",
]
