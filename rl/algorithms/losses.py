"""Training losses as pure tensor functions: the clipped surrogate over token advantages (GRCA eqs. 15-16) with its
variants (CISPO's clipped weight, GSPO's span ratio, DAPO's and Dr. GRPO's reductions), a k3 KL penalty to a frozen reference, SPA (SPA paper eqs. 3-6), DPO (Rafailov et al.; SPA paper eq. 2) and SFT's NLL.

Inputs are per-token log-probs (N, T) of the response tokens with a (N, T) mask (1 on response tokens); masked
positions may hold anything, even -inf, and never reach a result. Each loss returns (scalar tensor, dict of floats).
Sequence log-probs, log P(y | x), are sums over the response tokens (`masked_sample_sum`), as in SPA and DPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_token_tensors(mask: Tensor, **tensors: Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be (samples, tokens) = 2-D, got shape {tuple(mask.shape)}")
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, the mask {tuple(mask.shape)}")


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), values, 0.0)


def masked_sample_sum(values: Tensor, mask: Tensor) -> Tensor:
    """(N,): each sample's sum over its masked tokens (a sequence log-prob when `values` are token log-probs)."""
    return _masked(values, mask).sum(1)


# GRCA eq. 16, inner sum: 1/|o_i| sum_t
def masked_sample_mean(values: Tensor, mask: Tensor) -> Tensor:
    """(N,): each sample's mean over its masked tokens; a sample without tokens gives 0."""
    return masked_sample_sum(values, mask) / mask.sum(1).clamp(min=1)


# GRCA eq. 16, outer sum: 1/G sum_i 1/|o_i| sum_t
def mean_of_sample_means(values: Tensor, mask: Tensor) -> Tensor:
    """Token mean per sample, then mean over the samples that have tokens (0 if none)."""
    has_tokens = mask.bool().any(1)
    return (masked_sample_mean(values, mask) * has_tokens).sum() / has_tokens.sum().clamp(min=1)


def _masked_token_mean(values: Tensor, mask: Tensor) -> float:
    return (masked_sample_sum(values, mask).sum() / mask.sum().clamp(min=1)).item()


# The loss's reduction over tokens (algo.loss_agg)
def aggregate_loss(
    values: Tensor, mask: Tensor, how: str, tokens: float | None = None, max_tokens: int | None = None
) -> Tensor:
    """The scalar a loss minimizes from its per-token terms (N, T):

    - seq_mean_token_mean (GRCA eq. 16): each response's token mean, then the mean over responses;
    - token_mean (DAPO eq. 8): the sum over every token over `tokens` (default the mask's count; the update passes
      its accumulation window's count per micro-batch, so that a long response weighs by its length);
    - token_sum_norm (Dr. GRPO): each response's token sum over the constant `max_tokens` (the generation budget),
      then the mean over responses: no length normalization, so no bias towards long wrong answers."""
    if how == "seq_mean_token_mean":
        return mean_of_sample_means(values, mask)
    if how == "token_mean":
        count = mask.sum() if tokens is None else torch.tensor(float(tokens))
        return masked_sample_sum(values, mask).sum() / count.clamp(min=1)
    if how == "token_sum_norm":
        if not max_tokens:
            raise ValueError("aggregate_loss: token_sum_norm needs max_tokens, the generation budget")
        has_tokens = mask.bool().any(1)
        return (masked_sample_sum(values, mask) / max_tokens).sum() / has_tokens.sum().clamp(min=1)
    raise ValueError(f"aggregate_loss: expected seq_mean_token_mean, token_mean or token_sum_norm, got {how!r}")


# GSPO (Zheng et al. 2025, arXiv 2507.18071) eq. 7: s_i = exp(1/|y_i| sum_t log(pi_theta / pi_old)), per span
def span_log_ratio(log_ratio: Tensor, mask: Tensor, spans: Tensor | None) -> Tensor:
    """(N, T): each token's log-ratio replaced by the mean over its span, the log of the spans' geometric-mean
    ratio; `spans` (N, T) int holds each token's span index (None: the whole response is one span, GSPO's sequence
    ratio). The gradient flows through the mean: d s / d theta = s * mean_t grad log pi, GSPO's sequence gradient."""
    spans = torch.zeros_like(mask, dtype=torch.long) if spans is None else spans.long()
    one_hot = F.one_hot(spans, int(spans.max()) + 1) * mask.bool()[..., None]  # (N, T, S)
    span_means = (log_ratio[..., None] * one_hot).sum(1) / one_hot.sum(1).clamp(min=1)  # (N, S)
    return _masked(span_means.gather(1, spans), mask)


# GRCA eqs. 15-16: -1/G sum_i 1/|o_i| sum_t min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)
def clipped_surrogate_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: float | None = None,
    is_weights: Tensor | None = None,
    keep: Tensor | None = None,
    *,
    objective: str = "clip",
    spans: Tensor | None = None,
    sequence_ratio: bool = False,
    loss_agg: str = "seq_mean_token_mean",
    agg_tokens: float | None = None,
    max_tokens: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """-min(ratio A, clip(ratio, 1 - eps, 1 + eps_high) A) per token, reduced by `aggregate_loss(loss_agg)`.

    `clip_eps_high` defaults to `clip_eps` (symmetric; DAPO's clip-higher sets it above). `objective="cispo"`
    (MiniMax-M1, arXiv 2506.13585, eq. 4): the term is -sg(clip(ratio, 1 - eps, 1 + eps_high)) A log pi instead,
    so that a token whose ratio left the range keeps its gradient, scaled by the clipped weight. With
    `sequence_ratio` (GSPO), every token's ratio is its span's geometric mean (`span_log_ratio`, `spans` None: the
    whole response), so a span is clipped as one. `is_weights` (N, T), for rollouts from an older policy
    (`rollout.mode=one_step_off`): decoupled PPO (Hilton et al. 2022, "Batch size-invariance for policy
    optimization"; AReaL): `old_logprobs` are then the proximal policy's (the learner's current weights, recomputed),
    the ratio is clipped around it, and each token's term is multiplied by its truncated importance weight
    pi_prox / pi_rollout (`rl.algorithms.correction.rollout_correction`, tis), a constant, so that a token at the
    cap keeps its gradient. `keep` (N, T) bool (`rollout.correction` icepop or seq_mask): a token where it is false
    adds nothing to the loss and gets no gradient, but still counts in its sample's 1/|o_i|. Stats over response
    tokens: `clip_fraction` (clip: the clipped term is the smaller one, so the token gets no gradient; cispo: the
    weight was clipped), `approx_kl` (mean of old - new log-prob), `ratio_mean`."""
    _check_token_tensors(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = _masked(logprobs - old_logprobs, mask)
    if sequence_ratio:
        log_ratio = span_log_ratio(log_ratio, mask, spans)
    ratio = log_ratio.exp()  # eq. 15: rho_t = pi_theta / pi_old
    clipped_ratio = ratio.clamp(1.0 - clip_eps, 1.0 + high)
    if objective == "cispo":
        surrogate = clipped_ratio.detach() * advantages * _masked(logprobs, mask)
        clipped = clipped_ratio != ratio
    elif objective == "clip":
        unclipped, clipped_term = ratio * advantages, clipped_ratio * advantages
        surrogate = torch.minimum(unclipped, clipped_term)
        clipped = clipped_term < unclipped
    else:
        raise ValueError(f"clipped_surrogate_loss: objective must be clip or cispo, got {objective!r}")
    if is_weights is not None:
        _check_token_tensors(mask, is_weights=is_weights)
        surrogate = is_weights.detach() * surrogate
    if keep is not None:
        _check_token_tensors(mask, keep=keep)
        surrogate = torch.where(keep.bool(), surrogate, 0.0)
    loss = aggregate_loss(-surrogate, mask, loss_agg, agg_tokens, max_tokens)
    with torch.no_grad():
        stats = {
            "clip_fraction": _masked_token_mean(clipped.float(), mask),
            "approx_kl": _masked_token_mean(-_masked(logprobs - old_logprobs, mask), mask),
            "ratio_mean": _masked_token_mean(ratio, mask),
        }
    return loss, stats


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(N, T) per-token k3 estimate of KL(policy || reference): exp(r) - r - 1 with r = ref - logp; 0 off the mask."""
    _check_token_tensors(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = _masked(ref_logprobs - logprobs, mask)
    return torch.expm1(log_ratio) - log_ratio  # expm1: no cancellation in exp(r) - 1 for the small r of a close policy


def kl_penalty(
    logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, beta: float = 0.0
) -> tuple[Tensor, dict[str, float]]:
    """beta times the k3 KL, reduced like the surrogate (added to it; beta = 0 by default)."""
    kl = mean_of_sample_means(k3_kl(logprobs, ref_logprobs, mask), mask)
    return beta * kl, {"kl": kl.item()}


def nll_loss(logprobs: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """SFT: minus the mean log-prob over all response tokens of the batch (long targets weigh more, as in the
    usual token-averaged cross-entropy of GRCA eq. 5's warm-up)."""
    _check_token_tensors(mask, logprobs=logprobs)
    tokens = mask.sum()
    loss = -masked_sample_sum(logprobs, mask).sum() / tokens.clamp(min=1)
    return loss, {"nll": loss.item(), "tokens": float(tokens)}


# SPA eqs. 3-6: -log sigma(log P(y|x) - log P(y|x')), x' the corrupted input
def spa_loss(
    clean_logprobs: Tensor,
    masked_logprobs: Tensor,
    mask: Tensor,
    beta: float,
    nll_weight: float,
) -> tuple[Tensor, dict[str, float]]:
    """SPA: mean of -log sigma(beta (log P(y|x) - log P(y|x'))) plus nll_weight times `nll_loss` of y given x.

    x' is the corrupted (3D-masked) input; both log-probs are of the same target tokens y. The sequence log-probs
    are sums over y's tokens, as the paper's P(y|x) is the probability of the whole response."""
    _check_token_tensors(mask, clean_logprobs=clean_logprobs, masked_logprobs=masked_logprobs)
    margin = masked_sample_sum(clean_logprobs, mask) - masked_sample_sum(masked_logprobs, mask)
    preference = -F.logsigmoid(beta * margin).mean()  # eq. 5
    nll, _ = nll_loss(clean_logprobs, mask)
    stats = {
        "preference": preference.item(),
        "nll": nll.item(),
        "margin": margin.mean().item(),
        "accuracy": (margin > 0).float().mean().item(),
    }
    return preference + nll_weight * nll, stats


# DPO (SPA paper eq. 2): -log sigma(beta log [pi(y+) ref(y-)] / [ref(y+) pi(y-)])
def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, dict[str, float]]:
    """DPO on (B,) sequence log-probs: mean of -log sigma(beta [(pi_c - ref_c) - (pi_r - ref_r)])."""
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"dpo_loss needs four (pairs,) sequence log-prob tensors, got shapes {sorted(shapes)}")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    margin = chosen_reward - rejected_reward
    loss = -F.logsigmoid(margin).mean()
    stats = {
        "reward_margin": margin.mean().item(),
        "accuracy": (margin > 0).float().mean().item(),
        "chosen_reward": chosen_reward.mean().item(),
        "rejected_reward": rejected_reward.mean().item(),
    }
    return loss, stats


def dpo_pairs_from_groups(total_rewards: Tensor, valid: Tensor) -> list[tuple[int, int]]:
    """Per group (row), (row p*G+g of the highest valid total reward, of the lowest); the first index wins a tie.
    Groups with fewer than 2 valid samples or with all valid rewards equal give no pair."""
    if total_rewards.dim() != 2 or valid.shape != total_rewards.shape:
        raise ValueError(
            f"total_rewards and valid must both be (prompts, group), got {tuple(total_rewards.shape)} "
            f"and {tuple(valid.shape)}"
        )
    group = total_rewards.shape[1]
    valid = valid.bool()
    best = torch.where(valid, total_rewards.float(), -torch.inf).max(1)
    worst = torch.where(valid, total_rewards.float(), torch.inf).min(1)
    usable = (valid.sum(1) >= 2) & (best.values > worst.values)
    rows = usable.nonzero().flatten().tolist()
    return [(p * group + int(best.indices[p]), p * group + int(worst.indices[p])) for p in rows]


# Cloud alignment (our Stage 0, after PointLLM's first stage, which aligns point features with what the cloud shows):
# the 3D box, the category and the colour read linearly from the mean point token. Box MSE is x10 so that it weighs
# about as much as a cross-entropy while the box is still far off.
def cloud_alignment_loss(
    outputs: Tensor, box: Tensor, category: Tensor, colour: Tensor, num_categories: int
) -> tuple[Tensor, dict[str, float]]:
    """outputs (B, 6 + C + K) from `PointVLM.align_logits`: box (B, 6) in object units, category (B,) in [0, C),
    colour (B,) in [0, K)."""
    if outputs.shape[0] != box.shape[0] or outputs.shape[1] <= 6 + num_categories:
        raise ValueError(
            f"alignment outputs {tuple(outputs.shape)} do not fit {box.shape[0]} samples of a box, "
            f"{num_categories} categories and at least one colour"
        )
    box_loss = F.mse_loss(outputs[:, :6], box.to(outputs))
    category_loss = F.cross_entropy(outputs[:, 6 : 6 + num_categories], category.to(outputs.device))
    colour_loss = F.cross_entropy(outputs[:, 6 + num_categories :], colour.to(outputs.device))
    loss = 10.0 * box_loss + category_loss + colour_loss
    return loss, {
        "align": loss.item(),
        "align_box_mse": box_loss.item(),
        "align_category_ce": category_loss.item(),
        "align_colour_ce": colour_loss.item(),
    }


# ROSS3D eq. 3 (Wang et al.), for point patches: the reconstruction of the masked patches scored by the symmetric
# Chamfer distance (squared, as Point-MAE's), divided by each patch's mean squared radius so that putting every point at
# the centre scores a little over 1, whatever the cloud's scale.
def patch_reconstruction_loss(predicted: Tensor, target: Tensor) -> tuple[Tensor, dict[str, float]]:
    """predicted and target (M, k, 3) from `PointVLM.reconstruct_patches`: xyz relative to each patch's centre."""
    if predicted.dim() != 3 or predicted.shape[-1] != 3 or target.shape[0] != predicted.shape[0]:
        raise ValueError(
            f"reconstruction: predicted {tuple(predicted.shape)} and target {tuple(target.shape)} must be (M, k, 3) "
            "with the same M"
        )
    target = target.to(predicted)
    distances = torch.cdist(predicted, target).square()  # [M, k_pred, k_true]
    chamfer = distances.min(2).values.mean(1) + distances.min(1).values.mean(1)  # [M]
    radius = target.square().sum(-1).mean(1).clamp(min=1e-12)  # [M]
    loss = (chamfer / radius).mean()
    return loss, {"recon": loss.item(), "recon_chamfer": chamfer.mean().item()}
