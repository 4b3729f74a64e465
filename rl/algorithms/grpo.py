"""Broadcast GRPO, the baseline GRCA is measured against: the weighted sum of a response's rewards, standardized
once within its group, is every one of its tokens' advantage.

"DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models" (arXiv 2402.03300), as the GRCA
paper's baseline. Everything else is GRCA's (grca.py): the same batch, spans (for the §3.6 credit measurement),
clipped surrogate and update. Side by side, the one difference:

    GRCA:  routed_advantages(rewards, valid, field_masks, response_mask, rpc_weight, ...)   # eqs. 9, 10, 14
    GRPO:  broadcast_advantages(rewards, valid, weights, response_mask)                      # one scalar per response
"""

from __future__ import annotations

from torch import Tensor

from rl.algorithms.advantages import TensorsByName, broadcast_advantages
from rl.algorithms.grca import GRCA
from rl.config import Config, scalar_reward_weights


class GRPO(GRCA):
    name = "grpo"
    routes = False  # one advantage per response: algo.ratio=sequence is GSPO's ratio over the whole response

    def advantages(
        self, rewards: TensorsByName, field_masks: TensorsByName, response_mask: Tensor, *, valid: Tensor, cfg: Config
    ) -> Tensor:
        divide_by_std = cfg.algo.advantage_norm == "std"
        return broadcast_advantages(rewards, valid, scalar_reward_weights(cfg), response_mask, divide_by_std)


ALGORITHM = GRPO
