"""The alignment tax (GRCA's Table 4): what fine-tuning a pretrained LLM for the JSON answers costs its English, as
the perplexity of the LLM alone on a fixed English text before and after each stage. The text (english.txt beside
this file) is public domain: the Gettysburg Address, the Preamble of the US Constitution and the second paragraph of
the Declaration of Independence, 454 tokens of SmolLM2's tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import torch

ENGLISH = Path(__file__).with_name("english.txt")


@torch.no_grad()
def perplexity(llm: torch.nn.Module, tokenizer, text: str, window: int = 512) -> float:
    """exp(mean next-token NLL) of `text` under the causal LM `llm`, in windows of `window` tokens (each scored
    without context from the one before: the text fits one window of a 2,048-token model anyway)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    if len(ids) < 2:
        raise ValueError(f"perplexity: the text is {len(ids)} token(s); it needs at least 2")
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1].unsqueeze(0)  # at least 2 tokens: start <= len(ids) - 2
        logits = llm(input_ids=chunk[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum")
        total, count = total + float(nll), count + chunk.shape[1] - 1
    return math.exp(total / count)


def llm_perplexity(llm_dir: str | Path, text: str | None = None) -> float:
    """`perplexity` in float32 of the HF causal-LM folder `llm_dir` (a model folder, or a saved policy's `llm/`,
    whose LoRA adapters are merged) on `text` (default: english.txt)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    return perplexity(llm, tokenizer, ENGLISH.read_text() if text is None else text)
