"""Sampling helpers for `PointVLM.generate`: the log-probs of sampled tokens at the sampling temperature, and the
response mask."""

from __future__ import annotations

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


class SampledLogprobs(LogitsProcessor):
    """Placed after the temperature warper and before top-p, it sees each step's logits / T. At every step it
    records the token sampled at the step before under that step's log-softmax, so only one (B, V) distribution
    is held at a time instead of all T of them."""

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = scores.float().log_softmax(-1)
        return scores

    def collect(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, T) log-probs of the generated `sequences` (B, T)."""
        if self.previous is None or len(self.steps) != sequences.shape[1] - 1:
            raise RuntimeError(
                f"recorded {len(self.steps) + (self.previous is not None)} sampling steps for "
                f"{sequences.shape[1]} generated tokens; generate ran steps this recorder did not expect"
            )
        last = self.previous.gather(1, sequences[:, -1:]).squeeze(1)
        return torch.stack(self.steps + [last], dim=1)


class SuppressStopTokens(LogitsProcessor):
    """No stop token before `min_new_tokens` tokens have been generated. The generated ids are all that `generate`
    passes here (the prompt goes in as embeddings), so their count is the number of new tokens."""

    def __init__(self, min_new_tokens: int, stop_ids: list[int]) -> None:
        self.min_new_tokens = min_new_tokens
        self.stop_ids = list(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] < self.min_new_tokens:
            scores = scores.clone()
            scores[:, self.stop_ids] = float("-inf")
        return scores


def sampling_processors(
    recorder: SampledLogprobs,
    do_sample: bool,
    temperature: float,
    top_p: float,
    min_new_tokens: int = 0,
    stop_ids: list[int] | None = None,
) -> LogitsProcessorList:
    """The temperature warper, the recorder, the stop-token suppression of `min_new_tokens`, then the nucleus warper
    (generate itself is called with neutral values): the recorded log-probs are those of logits / T, what
    `PointVLM.logprobs(..., temperature=T)` recomputes, and not of the top-p truncated distribution (RL refuses
    top_p < 1 for that reason) nor of the one without stop tokens (transformers' own `min_new_tokens` would run
    before the recorder). Greedy decoding records raw ones."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    processors: list[LogitsProcessor] = []
    if do_sample and temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    processors.append(recorder)
    if min_new_tokens > 0:
        if not stop_ids:
            raise ValueError("min_new_tokens > 0 needs the stop ids to suppress")
        processors.append(SuppressStopTokens(min_new_tokens, stop_ids))
    if do_sample and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return LogitsProcessorList(processors)


def stop_mask(ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(B, T) long mask: 1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device)).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).long()


def chunked_token_logprobs(
    hidden: torch.Tensor, head: nn.Module, ids: torch.Tensor, temperature: float, chunk: int
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature) at `ids` (B, T), `chunk` positions at a time. With gradients each
    chunk runs under activation checkpointing, so its float32 logits are recomputed in backward rather than kept:
    at most (B, chunk, vocabulary) of them exist at once, forward or backward."""
    from torch.utils.checkpoint import checkpoint

    def score(h: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        logits = head(h).float() / temperature
        return logits.gather(-1, i[..., None]).squeeze(-1) - logits.logsumexp(-1)

    parts = []
    for start in range(0, ids.shape[1], chunk):
        h, i = hidden[:, start : start + chunk], ids[:, start : start + chunk]
        parts.append(checkpoint(score, h, i, use_reentrant=False) if torch.is_grad_enabled() else score(h, i))
    return torch.cat(parts, dim=1)


def find_stop_ids(llm: nn.Module, tokenizer) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def reset_generation_config(llm: nn.Module, tokenizer, stop_ids: list[int]) -> None:
    """Replace the checkpoint's sampling defaults (top_k, repetition penalty, ...) so that `generate` samples
    exactly the distribution it is asked for, and the saved folder carries neutral defaults."""
    from transformers import GenerationConfig

    llm.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )
