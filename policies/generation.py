"""Sampling for `PointVLM.generate`: a decode loop that shares each prompt's prefix across its samples and records
the sampled tokens' log-probs at the sampling temperature; the response mask; the learner's log-probs of responses,
with the prefix shared the same way."""

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
    `generate(num_return_sequences=n)` recomputes n times). Each token is drawn from softmax(logits / T) by
    `draw_tokens`, on torch's global generator, so a seed fixes the draws. The log-probs are those
    of logits / T (greedy: of the raw logits), taken before the nucleus cut (RL refuses top_p < 1 for that reason)
    and after the stop tokens are suppressed for the first `min_new_tokens` tokens, the distribution each token was
    drawn from, as vLLM reports it: what `PointVLM.logprobs(..., temperature=T, min_new_tokens=...)` recomputes."""
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
        if step < min_new_tokens:
            scores[:, stop_ids] = float("-inf")
        logprob = scores.log_softmax(-1)
        if do_sample and top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        token = draw_tokens(scores.softmax(-1)) if do_sample else scores.argmax(-1)
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


def draw_tokens(probs: torch.Tensor) -> torch.Tensor:
    """One token per row of `probs` (B, V) by inverting its CDF at one uniform draw per row. `torch.multinomial`,
    which transformers' `generate` calls, draws one exponential number per vocabulary entry (a single sample without
    replacement); on the demo model's 16 x 2,037 probabilities that took about as long as a decoder step. This draws B
    numbers instead of B x V. A zero-probability token (a suppressed stop, a nucleus cut) is never drawn: its CDF step
    is flat."""
    cdf = probs.double().cumsum(-1)  # float64: the CDF's rounding stays far below any token's probability
    u = torch.rand(len(probs), 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def stop_mask(ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(B, T) long mask: 1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.isin(ids, torch.tensor(stop_ids, device=ids.device)).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).long()


def scored(logits: torch.Tensor, ids: torch.Tensor, start: int, suppress: tuple[int, list[int]]) -> torch.Tensor:
    """log softmax(`logits`) (B, t, V) at `ids` (B, t), the logits of response positions start .. start + t - 1;
    `suppress` = (min_new_tokens, stop_ids): the stop tokens' logits are -inf before position min_new_tokens, as
    they were when those tokens were drawn (`sample_responses`, vLLM's min_tokens)."""
    min_new_tokens, stop_ids = suppress
    if start < min_new_tokens:
        logits = logits.clone()
        logits[:, : min_new_tokens - start, stop_ids] = float("-inf")
    return logits.gather(-1, ids[..., None]).squeeze(-1) - logits.logsumexp(-1)


def token_logprobs(
    hidden: torch.Tensor,
    head: nn.Module,
    ids: torch.Tensor,
    temperature: float,
    chunk: int = 0,
    suppress: tuple[int, list[int]] = (0, []),
) -> torch.Tensor:
    """log softmax(head(hidden) / temperature) at `ids` (B, T), the stops suppressed as `scored` says. `chunk` > 0
    scores that many positions at a time, and with gradients each chunk runs under activation checkpointing, so its
    float32 logits are recomputed in backward rather than kept: at most (B, chunk, vocabulary) of them exist at
    once, forward or backward."""
    from torch.utils.checkpoint import checkpoint

    def score(h: torch.Tensor, i: torch.Tensor, start: int) -> torch.Tensor:
        return scored(head(h).float() / temperature, i, start, suppress)

    if not chunk:
        return score(hidden, ids, 0)
    parts = []
    for start in range(0, ids.shape[1], chunk):
        h, i = hidden[:, start : start + chunk], ids[:, start : start + chunk]
        grad = torch.is_grad_enabled()
        parts.append(checkpoint(score, h, i, start, use_reentrant=False) if grad else score(h, i, start))
    return torch.cat(parts, dim=1)


def shared_prefix_hidden(
    decoder: nn.Module,
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    expand: torch.Tensor,
    response_embeds: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """The decoder's last hidden states (R, T, hidden) at the positions that predict each response token, where
    response r answers prompt `expand[r]` of the left-padded (P, L) prompts: each prompt runs once, and its KV cache
    (with its gradients) is gathered for the responses that share it. G samples per prompt thus cost P + R x T token
    positions instead of R x (L + T); the positions and the mask are the full sequence's, so the values are the same.
    """
    cache = _cache_keyword(decoder)
    positions = (prompt_mask.cumsum(-1) - 1).masked_fill(prompt_mask == 0, 0)
    prefix = decoder(inputs_embeds=prompt_embeds, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    last = prefix.last_hidden_state[expand, -1:]  # [R, 1, hidden]: predicts each response's first token
    steps = response_embeds.shape[1] - 1  # the last response token predicts nothing
    if steps == 0:
        return last
    kv = prefix[cache]
    kv.reorder_cache(expand)  # [P, ...] -> [R, ...]: each response's own prompt's keys and values
    mask = torch.cat([prompt_mask[expand], response_mask[:, :steps]], dim=1)  # [R, L + T - 1]
    positions = prompt_mask.sum(-1, keepdim=True)[expand] + torch.arange(steps, device=mask.device)  # [R, T - 1]
    rest = decoder(
        inputs_embeds=response_embeds[:, :steps],
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        **{cache: kv},
    ).last_hidden_state
    return torch.cat([last, rest], dim=1)  # [R, T, hidden]


def response_logprobs(
    llm: nn.Module,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    expand: torch.Tensor | None,
    ids: torch.Tensor,
    ids_mask: torch.Tensor,
    temperature: float,
    chunk: int = 0,
    suppress: tuple[int, list[int]] = (0, []),
) -> torch.Tensor:
    """`PointVLM.logprobs` before masking: (R, T) log-probs of the responses `ids` after the left-padded prompts
    `embeds` (P, L, hidden), response r answering prompt `expand[r]` (None: prompt r). Where prompts are shared by
    several responses, each prefix runs once (`shared_prefix_hidden`); it cannot where activation checkpointing keeps
    no cache, or where the LLM's forward scales or caps its logits beyond its output layer."""
    head, steps = llm.get_output_embeddings(), ids.shape[1]
    plain_head = not (getattr(llm.config, "final_logit_softcapping", None) or hasattr(llm.config, "logit_scale"))
    response_embeds = llm.get_input_embeddings()(ids).to(embeds.dtype)
    if expand is not None:
        checkpointed = any(getattr(module, "gradient_checkpointing", False) for module in llm.modules())
        if len(expand) > len(embeds) and plain_head and not checkpointed:
            hidden = shared_prefix_hidden(llm.get_decoder(), embeds, mask, expand, response_embeds, ids_mask)
            return token_logprobs(hidden, head, ids, temperature, chunk, suppress)
        embeds, mask = embeds[expand], mask[expand]
    full_mask = torch.cat([mask, ids_mask], dim=1)
    # the position ids transformers' generate uses for left-padded prompts, so both passes agree
    position_ids = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    inputs = {
        "inputs_embeds": torch.cat([embeds, response_embeds], dim=1),
        "attention_mask": full_mask,
        "position_ids": position_ids,
        "use_cache": False,
    }
    if chunk:
        if not plain_head:
            raise ValueError(
                "chunked log-probs apply the output layer alone, but this LLM's forward also scales "
                "or caps its logits; set learner.logprob_chunk=0"
            )
        hidden = llm.get_decoder()(**inputs).last_hidden_state[:, -(steps + 1) : -1]
        return token_logprobs(hidden, head, ids, temperature, chunk, suppress)
    logits = llm(**inputs, logits_to_keep=steps + 1).logits[:, :-1].float() / temperature
    return scored(logits, ids, 0, suppress)


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
