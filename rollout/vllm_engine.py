"""The GPU backend: vLLM samples the LLM from prompt embeddings that the PointVLM's encoders build in torch.

vLLM loads the plain Hugging Face folder `policy_dir/llm`; the torch PointVLM (encoders, fusion, projectors and
the token embedding table) turns each prompt into one unpadded (L, hidden) tensor, passed as
`{"prompt_embeds": tensor}` to an `LLM(enable_prompt_embeds=True)`
(https://docs.vllm.ai/en/stable/features/prompt_embeds/). Needs vLLM >= 0.11 (`pip install 'pointrl[gpu]'`):
its V1 engine takes prompt embeddings, and with `logprobs_mode="processed_logprobs"` it reports the sampled tokens'
log-probs after its logits processing, i.e. of softmax(logits / temperature), the same quantity as
`PointVLM.logprobs(..., temperature)` and the HF engine's (vLLM's default, raw log-probs, is temperature 1 and would
make the PPO ratio's denominator another policy than the one that sampled). Processed log-probs are also after
top-p, which RL configs refuse below 1. vllm is imported only when an engine is built.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from policies import PointVLM, PolicyInputs
from policies.hf_llm import merged_lora_state
from rollout.engine import RolloutBatch, SamplingConfig, check_one_uid_per_prompt, check_version_order

INSTALL_HINT = "the vllm rollout backend needs vLLM (>= 0.11): pip install 'pointrl[gpu]'"


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return vllm


def llm_weights(policy: PointVLM) -> list[tuple[str, torch.Tensor]]:
    """The LLM tensors that training changes, under their Hugging Face names (LoRA merged into its base
    weights, since vLLM serves the plain model); empty for a frozen LLM."""
    mode = policy.config.llm_mode
    if mode == "frozen":
        return []
    if mode == "lora":
        from peft.tuners.lora import LoraLayer

        base = policy.llm.get_base_model()
        merged = merged_lora_state(base)
        return [(f"{name}.weight", merged[f"{name}.weight"])
                for name, module in base.named_modules() if isinstance(module, LoraLayer)]
    return [(name, p.detach()) for name, p in policy.llm.named_parameters() if p.requires_grad]


def _load_into_vllm_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    # runs inside each vLLM worker process (LLM.collective_rpc passes the worker as the first argument);
    # the model's load_weights takes (HF name, tensor) pairs, as in vLLM's RLHF examples
    worker.model_runner.model.load_weights(weights=weights)


class VLLMEngine:
    """vLLM over `policy_dir/llm`, with `policy` (or the PointVLM loaded from `policy_dir`) building the prompt
    embeddings on its own device. `llm_options` go to `vllm.LLM` (gpu_memory_utilization, max_model_len, ...)."""

    def __init__(self, policy_dir: str | Path, policy: PointVLM | None = None, version: int = 0, **llm_options):
        vllm = import_vllm()
        # LLM.collective_rpc pickles the weight-loading callable; vLLM's V1 engine refuses pickled messages unless
        # this is set (documented for its RLHF examples)
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
        self.policy = (policy if policy is not None else PointVLM.from_pretrained(policy_dir)).eval()
        self.llm = vllm.LLM(model=str(Path(policy_dir) / "llm"), enable_prompt_embeds=True,
                            dtype=self.policy.config.llm_dtype, logprobs_mode="processed_logprobs", **llm_options)
        self._sampling_params = vllm.SamplingParams
        self._version = version

    @property
    def version(self) -> int:
        return self._version

    def generate(self, inputs: PolicyInputs, uids: list[str], sampling: SamplingConfig) -> RolloutBatch:
        check_one_uid_per_prompt(uids, inputs)
        start = time.perf_counter()
        with torch.no_grad():
            embeds, mask = self.policy.embed(inputs)
        prompts = [{"prompt_embeds": row[keep == 1].cpu()} for row, keep in zip(embeds, mask)]  # drop left padding
        params = self._sampling_params(
            n=sampling.n,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p if sampling.do_sample else 1.0,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            logprobs=0,  # only the sampled token's log-prob (post-temperature: logprobs_mode above)
            stop_token_ids=self.policy.stop_ids,
            detokenize=False,  # texts are decoded below exactly as the HF engine decodes them
        )
        completions = [c for out in self.llm.generate(prompts, params, use_tqdm=False)
                       for c in sorted(out.outputs, key=lambda c: c.index)]
        ids, response_mask, logprobs = _pad_completions(completions, self.policy.tokenizer.pad_token_id)
        kept = ids.masked_fill(response_mask == 0, self.policy.tokenizer.pad_token_id)
        return RolloutBatch(
            version=self._version,
            uids=list(uids),
            response_ids=ids,
            response_mask=response_mask,
            logprobs=logprobs,
            texts=self.policy.tokenizer.batch_decode(kept, skip_special_tokens=True),
            tokens_generated=int(response_mask.sum()),
            seconds=time.perf_counter() - start,
            pad_token_id=self.policy.tokenizer.pad_token_id,
        )

    @torch.no_grad()
    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> None:
        check_version_order(self._version, version)
        self.policy.load_trainable_state_dict(state)
        weights = [(name, t.detach().cpu()) for name, t in llm_weights(self.policy)]
        if weights:
            self.llm.collective_rpc(_load_into_vllm_worker, args=(weights,))
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._version = version


def _pad_completions(completions, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM completions -> right-padded ids (R, T), mask (R, T) and the sampled tokens' log-probs (R, T).
    vLLM ends a completion at its first stop token and keeps that token in `token_ids`."""
    width = max(len(c.token_ids) for c in completions)
    ids = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    logprobs = torch.zeros((len(completions), width), dtype=torch.float32)
    for row, c in enumerate(completions):
        if c.logprobs is None:
            raise RuntimeError("vLLM returned no log-probs although SamplingParams(logprobs=0) asked for them")
        length = len(c.token_ids)
        ids[row, :length] = torch.tensor(list(c.token_ids))
        mask[row, :length] = 1
        logprobs[row, :length] = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, c.token_ids)])
    return ids, mask, logprobs
