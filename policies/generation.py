"""Sampling for `PointVLM.generate`: a decode loop that shares each prompt's prefix across its samples and records
the sampled tokens' log-probs at the sampling temperature; the response mask; chunked log-probs for the learner."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import TopPLogitsWarper


def _cache_keyword(llm: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); the vLLM lane's venv pins one before the rename."""
    return "cache" if "cache" in inspect.signature(llm.get_decoder().forward).parameters else "past_key_values"


@torch.no_grad()
def sample_responses(
    llm: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    n: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    min_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """n responses per prompt from left-padded `embeds` (B, L, hidden) -> (ids, log-probs), each (B x n, T), row
    b * n + g; after a row's stop token, pad ids (their log-probs are of no distribution and get masked).

    The prompt is run once per prompt and its KV cache repeated n times: the n samples share their prefix (what
    `generate(num_return_sequences=n)` recomputes n times). The draws are transformers' own: softmax(logits / T) into
    `torch.multinomial` on the global generator, so a seed gives the tokens `generate` gives. The log-probs are those
    of logits / T (greedy: of the raw logits), taken before the nucleus cut and before the stop tokens are suppressed
    for the first `min_new_tokens` tokens: what `PointVLM.logprobs(..., temperature=T)` recomputes (RL refuses
    top_p < 1 for that reason)."""
    if temperature <= 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got temperature={temperature}, top_p={top_p}")
    if min_new_tokens > 0 and not stop_ids:
        raise ValueError("min_new_tokens > 0 needs the stop ids to suppress")
    temperature = temperature if do_sample else 1.0
    cache = _cache_keyword(llm)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    kv, logits = out[cache], out.logits[:, -1].float().repeat_interleave(n, 0)  # [B x n, V]
    kv.batch_repeat_interleave(n)
    mask, position = mask.repeat_interleave(n, 0), mask.sum(-1, keepdim=True).repeat_interleave(n, 0)
    stops = torch.tensor(stop_ids, device=mask.device)
    done = torch.zeros(len(mask), dtype=torch.bool, device=mask.device)
    tokens, logprobs = [], []
    for step in range(max_new_tokens):
        scores = logits / temperature
        logprob = scores.log_softmax(-1)
        if step < min_new_tokens:
            scores[:, stop_ids] = float("-inf")
        if do_sample and top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        token = torch.multinomial(scores.softmax(-1), 1).squeeze(1) if do_sample else scores.argmax(-1)
        token = token.masked_fill(done, pad_id)
        tokens.append(token)
        logprobs.append(logprob.gather(1, token[:, None]).squeeze(1))
        done |= torch.isin(token, stops)
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = llm(input_ids=token[:, None], attention_mask=mask, position_ids=position, use_cache=True, **{cache: kv})
        logits, position = out.logits[:, -1].float(), position + 1
    return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


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
