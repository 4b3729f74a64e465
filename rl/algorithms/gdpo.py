"""GDPO, group reward-decoupled normalization: each reward standardized within its group on its own, the weighted sum
of those normalized over the batch, and that one scalar broadcast to every token of the response.

"GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL Optimization" (Liu et al. 2026,
arXiv 2601.05242; verl, TRL's `multi_objective_aggregation` and NeMo-RL ship it). It is the strongest non-routed
alternative to GRCA: per-field normalization without per-field routing. Everything else is GRCA's (grca.py), as for
GRPO; the three side by side:

    GRCA:  routed_advantages(rewards, valid, field_masks, response_mask, rpc_weight, ...)   # a field's on its tokens
    GRPO:  broadcast_advantages(rewards, valid, weights, response_mask)                      # standardize the sum
    GDPO:  decoupled_advantages(rewards, valid, weights, response_mask)                      # sum the standardized
"""

from __future__ import annotations

from torch import Tensor

from rl.algorithms.advantages import TensorsByName, decoupled_advantages
from rl.algorithms.grpo import GRPO
from rl.config import Config, scalar_reward_weights


class GDPO(GRPO):
    name = "gdpo"

    def advantages(
        self, rewards: TensorsByName, field_masks: TensorsByName, response_mask: Tensor, *, valid: Tensor, cfg: Config
    ) -> Tensor:
        divide_by_std = cfg.algo.advantage_norm == "std"
        return decoupled_advantages(rewards, valid, scalar_reward_weights(cfg), response_mask, divide_by_std)


ALGORITHM = GDPO
