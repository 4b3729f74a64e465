"""The CPU default backend: transformers `generate` on `PointVLM.embed`'s inputs, in the same process as the policy."""

from __future__ import annotations

import time

import torch

from policies import PointVLM, PolicyInputs
from rollout.engine import RolloutBatch, SamplingConfig, check_one_uid_per_prompt, check_version_order, sampled_batch


class HFEngine:
    """Samples through `PointVLM.generate` (log-probs at the sampling temperature recorded while sampling) and loads
    published weights straight into the policy it was given, which it puts in eval mode (no dropout while sampling)."""

    def __init__(self, policy: PointVLM, version: int = 0):
        self.policy = policy.eval()
        self._version = version

    @property
    def version(self) -> int:
        return self._version

    def generate(self, inputs: PolicyInputs, uids: list[str], sampling: SamplingConfig) -> RolloutBatch:
        check_one_uid_per_prompt(uids, inputs)
        start = time.perf_counter()
        out = self.policy.generate(
            inputs,
            num_return_sequences=sampling.n,
            do_sample=sampling.do_sample,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            seed=sampling.seed,
        )
        return sampled_batch(
            self._version,
            uids,
            out.response_ids,
            out.response_mask,
            out.logprobs,
            out.texts,
            self.policy.tokenizer.pad_token_id,
            start,
        )

    @torch.no_grad()
    def load_weights(
        self, state: dict[str, torch.Tensor], version: int, rollback: bool = False, share: bool = False
    ) -> None:
        check_version_order(self._version, version, rollback)
        self.policy.load_trainable_state_dict(state, share)
        self._version = version
