"""Rollout correction: what the clipped surrogate does with the tokens whose learner and rollout log-probs differ.

The rollout engine's log-probs are not the learner's: a bfloat16 vLLM engine against a float32 learner, a KV-cached
decode against one full pass, or (rollout.mode=one_step_off) an engine one version behind. The learner then clips
its ratio around its own recomputation, pi_learner (rl.config.recomputes_old_logprobs), and the tokens were drawn
from pi_rollout; each token's log-ratio r_t = log pi_learner(y_t) - log pi_rollout(y_t) says how far apart they are.
`rollout_correction` turns r_t into one of (`rollout.correction`):

    none      nothing: every token counts as if pi_rollout were pi_learner (only the mismatch metrics are logged)
    tis       truncated importance sampling: each token's term times the constant w_t = min(exp(r_t), C), C =
              `algo.max_is_weight` (IMPALA's rho-bar, Espeholt et al. 2018; for engine mismatch: Yao et al. 2025,
              "Your efficient RL framework secretly brings you off-policy RL training", slime's and verl's TIS); a
              token at the cap keeps its gradient, scaled by C. Also decoupled PPO's weight under one_step_off
              (losses.clipped_surrogate_loss), where pi_learner is the proximal policy.
    icepop    token masking (IcePop, from the Ring-1T report, inclusionAI 2025): a token whose ratio exp(r_t) lies outside [low, high] leaves the loss; the others count as they
              are (weight 1).
    seq_mask  geometric sequence masking (SkyRL's geometric mask): a response whose geometric-mean ratio
              exp(mean_t r_t) over its tokens lies outside [low, high] leaves the loss whole. The geometric mean
              does not grow with the length as the product does, so one bound fits short and long responses; it is
              much closer to 1 than single tokens' ratios, so its bounds are usually tighter than icepop's.

Masked tokens (`keep` False) contribute nothing to the loss and get no gradient, but still count in their
response's token count, the denominator of GRCA eq. 16's 1/|o_i| (as verl and slime do): masking does not make the
kept tokens of a response weigh more. Pure tensors, no config: the caller passes the mode and thresholds.
"""

from __future__ import annotations

from torch import Tensor

# losses.py's private token helpers, shared rather than repeated
from rl.algorithms.losses import _check_token_tensors, _masked, _masked_token_mean

CORRECTIONS = ("none", "tis", "icepop", "seq_mask")  # rl.config's choice list repeats it to stay torch-free


def rollout_correction(
    learner_logprobs: Tensor,
    rollout_logprobs: Tensor,
    mask: Tensor,
    mode: str,
    cap: float,
    bounds: tuple[float, float],
) -> tuple[Tensor | None, Tensor | None, dict[str, float]]:
    """(weights, keep, stats) for the response tokens of `mask` (N, T): `weights` (N, T), detached, multiply each
    token's surrogate term (tis; else None); `keep` (N, T) bool says which tokens stay in the loss (icepop,
    seq_mask; else None), both true/1 off the mask. `cap`: tis's C; `bounds`: (low, high) of icepop and seq_mask.

    Stats over the response tokens: `mismatch/log_ratio_mean` (signed mean of r_t), `mismatch/log_ratio_abs_mean`,
    `mismatch/log_ratio_abs_max`, `mismatch/weight_mean` and `mismatch/weight_max` (exp(r_t) before truncation or
    masking), and `mismatch/truncated_fraction` (tis: exp(r_t) > C) or `mismatch/masked_fraction` (icepop,
    seq_mask: the share of the response tokens masked)."""
    if mode not in CORRECTIONS:
        raise ValueError(f"rollout correction: expected one of {CORRECTIONS}, got {mode!r}")
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"rollout correction: bounds must be 0 < low < high, got {bounds}")
    _check_token_tensors(mask, learner_logprobs=learner_logprobs, rollout_logprobs=rollout_logprobs)
    on = mask.bool()
    log_ratio = _masked(learner_logprobs.detach() - rollout_logprobs.detach(), mask)  # 0 off the mask
    ratio = log_ratio.exp()
    stats = {
        "mismatch/log_ratio_mean": _masked_token_mean(log_ratio, mask),
        "mismatch/log_ratio_abs_mean": _masked_token_mean(log_ratio.abs(), mask),
        "mismatch/log_ratio_abs_max": float(log_ratio.abs().max()) if on.any() else 0.0,
        "mismatch/weight_mean": _masked_token_mean(ratio, mask),
        "mismatch/weight_max": float(ratio[on].max()) if on.any() else 1.0,
    }
    weights = keep = None
    if mode == "tis":
        weights = ratio.clamp(max=cap)
        stats["mismatch/truncated_fraction"] = _masked_token_mean((ratio > cap).float(), mask)
    elif mode == "icepop":
        keep = ~on | ((ratio >= low) & (ratio <= high))
    elif mode == "seq_mask":
        geometric = (log_ratio.sum(1) / mask.sum(1).clamp(min=1)).exp()  # (N,): exp(mean_t r_t)
        kept_rows = (geometric >= low) & (geometric <= high)
        keep = ~on | kept_rows[:, None]
    if keep is not None:
        stats["mismatch/masked_fraction"] = _masked_token_mean((~keep).float(), mask)
    return weights, keep, stats
