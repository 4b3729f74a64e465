"""Advantages for GRPO-style training: per-group standardization, GRCA's routed per-field token advantages, the
broadcast baseline (GRCA paper eqs. 9, 10, 14) and GDPO's decoupled normalization, and how much of a field's token advantage the other rewards put there
(§3.6). Pure tensor functions. λ, the RPC weight, is always given: its one home is `algo.rpc_weight`.

Layout: rewards are (P, G), one row per prompt and one column per sampled output; token tensors are (N, T) with
N = P * G in row-major order, so sample g of prompt p is row p * G + g. `valid` (P, G) marks the samples whose
reward call came back: a missing sample is left out of its group's statistics and gets advantage 0 everywhere.

The group std is the sample (unbiased, n - 1) std, as `torch.std` and the GRPO implementations (TRL, DeepSeekMath's
reference code) use; a group with fewer than 2 valid samples or with all valid rewards equal carries no signal and
gets 0 (decided exactly, by max == min, so float round-off cannot turn a constant group into +-1e-11 noise).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import combinations

import torch
from torch import Tensor

from rewards.schema import GEOMETRY_FIELDS
from rl.config import ROUTABLE_FIELDS

ROUTED_FIELDS = GEOMETRY_FIELDS  # routed by default (algo.routed_fields), and measured by other_fields_credit


def _check_group_shapes(rewards: Tensor, valid: Tensor, name: str = "rewards") -> None:
    if rewards.dim() != 2:
        raise ValueError(f"{name} must be (prompts, group) = 2-D, got shape {tuple(rewards.shape)}")
    if valid.shape != rewards.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor shaped like {name} {tuple(rewards.shape)}, "
            f"got {valid.dtype} {tuple(valid.shape)}"
        )


# GRCA eq. 9: A_f = (r_f - mean_G(r_f)) / (std_G(r_f) + eps); Dr. GRPO (arXiv 2503.20783) drops the std
def group_standardize(rewards: Tensor, valid: Tensor, eps: float = 1e-6, divide_by_std: bool = True) -> Tensor:
    """(r - mean) / (std + eps) within each row over its valid entries (without `divide_by_std`: r - mean, Dr.
    GRPO's unbiased advantage); invalid entries and flat rows give 0."""
    _check_group_shapes(rewards, valid)
    rewards = rewards.float()
    if not torch.isfinite(rewards[valid]).all():
        raise ValueError("rewards: a valid entry is NaN or infinite (mark it invalid instead)")
    count = valid.sum(1, keepdim=True)
    mean = torch.where(valid, rewards, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
    deviation = torch.where(valid, rewards - mean, 0.0)
    std = (deviation.square().sum(1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    highest = torch.where(valid, rewards, -torch.inf).amax(1, keepdim=True)
    lowest = torch.where(valid, rewards, torch.inf).amin(1, keepdim=True)
    informative = (count >= 2) & (highest > lowest)
    return torch.where(valid & informative, deviation / (std + eps) if divide_by_std else deviation, 0.0)


# GRCA eq. 14: A_bg = standardized(format + answer) + λ standardized(rpc)
def background_rewards_advantage(
    format_reward: Tensor,
    answer_reward: Tensor,
    rpc_reward: Tensor,
    valid: Tensor,
    rpc_weight: float,
    divide_by_std: bool = True,
) -> Tensor:
    """The background advantage (P, G): standardized (format + answer) plus λ times standardized RPC."""
    standardized = partial(group_standardize, valid=valid, divide_by_std=divide_by_std)
    return standardized(format_reward.float() + answer_reward.float()) + rpc_weight * standardized(rpc_reward)


# GRCA eq. 10: A_t = A_f for t in field f's span T_f, A_bg for t in T_bg
def routed_token_advantages(
    field_advantages: Mapping[str, Tensor],
    field_token_masks: Mapping[str, Tensor],
    background_advantage: Tensor,
    response_mask: Tensor,
) -> Tensor:
    """(N, T): a token in field f's span gets f's advantage, other response tokens the background, padding 0."""
    if set(field_advantages) != set(field_token_masks):
        raise ValueError(
            f"field advantages {sorted(field_advantages)} and token masks {sorted(field_token_masks)} differ"
        )
    rows, length = response_mask.shape
    if background_advantage.shape != (rows,):
        raise ValueError(f"background_advantage must be ({rows},), got {tuple(background_advantage.shape)}")
    for name in field_advantages:
        if field_advantages[name].shape != (rows,) or field_token_masks[name].shape != (rows, length):
            raise ValueError(
                f"{name}: advantage must be ({rows},) and token mask ({rows}, {length}), got "
                f"{tuple(field_advantages[name].shape)} and {tuple(field_token_masks[name].shape)}"
            )
    for first, second in combinations(field_token_masks, 2):
        shared = int((field_token_masks[first].bool() & field_token_masks[second].bool()).sum())
        if shared:
            raise ValueError(f"token masks of {first} and {second} overlap on {shared} tokens (spans must be disjoint)")
    advantages = background_advantage.float()[:, None].expand(rows, length)
    for name, advantage in field_advantages.items():
        advantages = torch.where(field_token_masks[name].bool(), advantage.float()[:, None], advantages)
    return torch.where(response_mask.bool(), advantages, 0.0)


def routed_advantages(
    rewards: Mapping[str, Tensor],
    valid: Tensor,
    field_token_masks: Mapping[str, Tensor],
    response_mask: Tensor,
    rpc_weight: float,
    routed_fields: Sequence[str] = ROUTED_FIELDS,
    routed_weights: Mapping[str, float] | None = None,
    divide_by_std: bool = True,
) -> Tensor:
    """GRCA's token advantages (N, T) from the reward service's per-field rewards (each (P, G)).

    Each routed field is standardized in its group (eq. 9; only centred without `divide_by_std`) and scaled by its
    weight (`routed_weights`, default 1),
    the background is eq. 14, and eq. 10 routes them onto the tokens. A routable field left out of `routed_fields`
    has no span of its own, so its standardized reward joins the background (and a routed answer leaves it): every
    field's reward reaches the tokens exactly once."""
    _require_keys(rewards, ("format", "rpc", *ROUTABLE_FIELDS), "rewards")
    _require_keys(field_token_masks, routed_fields, "field_token_masks")
    weights = dict.fromkeys(routed_fields, 1.0) | dict(routed_weights or {})
    _check_rows(valid, response_mask)
    standardized = partial(group_standardize, valid=valid, divide_by_std=divide_by_std)
    field_advantages = {name: weights[name] * standardized(rewards[name]).reshape(-1) for name in routed_fields}
    answer = torch.zeros_like(rewards["answer"]) if "answer" in routed_fields else rewards["answer"]
    background = background_rewards_advantage(
        rewards["format"], answer, rewards["rpc"], valid, rpc_weight, divide_by_std
    )
    for name in ROUTABLE_FIELDS:
        if name not in routed_fields and name != "answer":
            background = background + standardized(rewards[name])
    masks = {name: field_token_masks[name] for name in routed_fields}
    return routed_token_advantages(field_advantages, masks, background.reshape(-1), response_mask)


def broadcast_advantages(
    rewards: Mapping[str, Tensor],
    valid: Tensor,
    weights: Mapping[str, float],
    response_mask: Tensor,
    divide_by_std: bool = True,
) -> Tensor:
    """Broadcast GRPO (N, T): the weighted reward sum standardized once per group, on every response token."""
    _require_keys(rewards, tuple(weights), "rewards")
    _check_rows(valid, response_mask)
    total = sum(weight * rewards[name].float() for name, weight in weights.items())
    return _on_every_token(group_standardize(total, valid, divide_by_std=divide_by_std), response_mask)


# GDPO (Liu et al. 2026, arXiv 2601.05242): A_sum = sum_k w_k standardized_G(r_k), then normalized over the batch
def decoupled_advantages(
    rewards: Mapping[str, Tensor],
    valid: Tensor,
    weights: Mapping[str, float],
    response_mask: Tensor,
    divide_by_std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """GDPO (N, T): each reward standardized within its group on its own (so that a rare reward's spread is not
    drowned by a common one's), the weighted sum of those, then standardized over the batch's valid samples (its
    range then does not grow with the number of rewards), on every response token."""
    _require_keys(rewards, tuple(weights), "rewards")
    _check_rows(valid, response_mask)
    total = sum(
        weight * group_standardize(rewards[name], valid, divide_by_std=divide_by_std)
        for name, weight in weights.items()
    )
    present = total[valid]
    if present.numel() >= 2 and present.max() > present.min():
        total = torch.where(valid, (total - present.mean()) / (present.std() + eps), 0.0)
    return _on_every_token(total, response_mask)


def _on_every_token(advantage: Tensor, response_mask: Tensor) -> Tensor:
    """(P, G) per-sample advantages on each of the sample's response tokens (N, T), 0 on padding."""
    return torch.where(response_mask.bool(), advantage.reshape(-1, 1), 0.0)


def advantage_stats(advantages: Tensor, response_mask: Tensor) -> dict[str, float]:
    """Mean, population std, largest magnitude and fraction of nonzero values over the response tokens."""
    values = advantages[response_mask.bool()].float()
    if values.numel() == 0:
        return {"mean": 0.0, "std": 0.0, "abs_max": 0.0, "frac_nonzero": 0.0}
    return {
        "mean": values.mean().item(),
        "std": values.std(correction=0).item(),
        "abs_max": values.abs().max().item(),
        "frac_nonzero": (values != 0).float().mean().item(),
    }


TensorsByName = Mapping[str, Tensor]  # rewards (P, G) by reward, or token masks (N, T) by field
# (rewards, field token masks, response mask) -> token advantages: a run's routed or broadcast call, its settings bound
AdvantageFn = Callable[[TensorsByName, TensorsByName, Tensor], Tensor]


def only_varying(rewards: Mapping[str, Tensor], valid: Tensor, keep: str) -> dict[str, Tensor]:
    """The reward table with every reward but `keep` replaced by its group mean over the valid samples: constant within
    its group, each of them then standardizes to 0 and gives no advantage signal."""
    _check_group_shapes(rewards[keep], valid, keep)
    count = valid.sum(1, keepdim=True).clamp(min=1)
    out = {}
    for name, values in rewards.items():
        mean = torch.where(valid, values.float(), 0.0).sum(1, keepdim=True) / count
        out[name] = values if name == keep else mean.expand_as(values)
    return out


# GRCA §3.6, eq. 18: on field f's span T_f the advantage is A_f + eps_f, eps_f what the other rewards put there
def other_fields_credit(
    advantage_of: AdvantageFn,
    rewards: Mapping[str, Tensor],
    valid: Tensor,
    advantages: Tensor,
    field_token_masks: Mapping[str, Tensor],
    fields: Sequence[str] = ROUTED_FIELDS,
) -> dict[str, dict[str, float]]:
    """Per field f, `var`: the variance over f's tokens of eps_f, the run's advantage `advantages` minus the one
    `advantage_of` gives f's tokens when only f's reward varies in its group; `share`: that over the variance of the
    advantage there (above 1 only when eps_f anticorrelates with A_f, as when the advantage hardly follows f's
    reward: eps_f then holds -A_f). Routed credit gives 0 by construction, broadcast does not. `field_token_masks`
    holds every span `advantage_of` routes, `fields` those measured; a field with no token in the batch is left
    out, and its share when its advantage there does not vary."""
    rows, spans = advantages.shape[0], list(field_token_masks)
    # a token's advantage depends only on its row and on the span it lies in (eq. 10), so the counterfactual is
    # taken on one probe token per field and row, [P x G, F], instead of a second pass over [P x G, T]
    probe = torch.eye(len(spans), dtype=torch.bool).expand(rows, -1, -1)  # [P x G, F, F]
    probe_masks = {name: probe[:, k] for k, name in enumerate(spans)}
    out = {}
    for name in fields:
        mask = field_token_masks[name].bool()  # [P x G, T]
        if not mask.any():
            continue
        own = advantage_of(only_varying(rewards, valid, name), probe_masks, torch.ones(rows, len(spans)))
        own = own[:, spans.index(name)]  # [P x G]
        on_field = advantages.float()[mask]  # f's tokens, flattened
        others = on_field - own[:, None].expand_as(mask)[mask]  # eps_f on those tokens
        spread, total = others.var(correction=0).item(), on_field.var(correction=0).item()
        out[name] = {"var": spread, **({"share": spread / total} if total > 0 else {})}
    return out


def _require_keys(mapping: Mapping[str, object], keys: Sequence[str], what: str) -> None:
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ValueError(f"{what} lacks {missing} (has {sorted(mapping)})")


def _check_rows(valid: Tensor, response_mask: Tensor) -> None:
    if valid.dim() != 2 or response_mask.dim() != 2 or response_mask.shape[0] != valid.numel():
        raise ValueError(
            f"response_mask must have prompts * group = {valid.numel()} rows for valid {tuple(valid.shape)}, "
            f"got {tuple(response_mask.shape)}"
        )
