"""DAPO: broadcast GRPO with its four changes (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
System at Scale", arXiv 2503.14476):

- clip-higher (§3.1): the ratio's upper clip 1 + 0.28 above the lower 1 - 0.2, so that unlikely tokens can rise;
- dynamic sampling (§3.2): groups whose samples all scored alike are replaced by fresh prompts (dynamic_sampling.py);
- token-level loss (§3.3, eq. 8): the loss is the mean over every token of the step, not of each response's mean;
- overlong reward shaping (§3.4, eq. 13): a response reaching into the last algo.overlong_buffer tokens of
  rollout.max_new_tokens loses up to 1 from its reward, in proportion to how far in it reached.

The first three are options any GRCA-family algorithm can take (algo.clip_eps_high, rollout.dynamic_sampling,
algo.loss_agg); `DAPO.recipe` sets them unless the run sets them itself. The fourth is DAPO's `advantages`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rl.algorithms.advantages import TensorsByName, broadcast_advantages
from rl.algorithms.grpo import GRPO
from rl.config import Config, scalar_reward_weights


# DAPO eq. 13: 0 up to L_max - L_cache, then ((L_max - L_cache) - |y|) / L_cache, -1 past L_max
def overlong_penalty(lengths: Tensor, max_tokens: int, buffer: int) -> Tensor:
    """The soft overlong punishment of each response length (a tensor of any shape): 0 while it stays clear of the
    last `buffer` tokens of `max_tokens`, falling linearly to -1 at `max_tokens` (a response cut there) and below."""
    if buffer == 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_tokens - buffer)).clamp(min=0)
    return -(over / buffer).clamp(max=1.0)


class DAPO(GRPO):
    name = "dapo"
    recipe = {"algo.clip_eps_high": 0.28, "algo.loss_agg": "token_mean", "rollout.dynamic_sampling": True}

    def advantages(
        self, rewards: TensorsByName, field_masks: TensorsByName, response_mask: Tensor, *, valid: Tensor, cfg: Config
    ) -> Tensor:
        lengths = response_mask.sum(1).view(valid.shape)
        shaped = {
            **rewards,
            "overlong": overlong_penalty(lengths, cfg.rollout.max_new_tokens, cfg.algo.overlong_buffer),
        }
        weights = {**scalar_reward_weights(cfg), "overlong": 1.0}
        divide_by_std = cfg.algo.advantage_norm == "std"
        return broadcast_advantages(shaped, valid, weights, response_mask, divide_by_std)


ALGORITHM = DAPO
