"""The Hugging Face LLM side of a policy: its tokenizer loaded exactly as saved, LoRA applied per the policy's
config, and LoRA merged back into plain weights for export (a saved folder and vLLM's weight sync)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from policies.inputs import PointVLMConfig


def load_tokenizer(directory: str | Path):
    """The tokenizer of an HF model folder exactly as its `tokenizer.json` describes it. AutoTokenizer in
    transformers 5 rebuilds a known model type's pre-tokenizer (Qwen2's splits every digit) over the file's, so a
    tokenizer that was trained with another one would read differently after a save and a load."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)  # a slow-only tokenizer (sentencepiece model, vocab files)


def apply_llm_mode(llm: nn.Module, config: PointVLMConfig) -> nn.Module:
    """The LLM as the policy trains it: LoRA adapters injected, or all its weights trainable or frozen. In a
    vision-language model (a `model.visual` tower beside `model.language_model`, as in Qwen2.5-VL, whose vision
    blocks also hold gate/up/down_proj) the adapters go into the language model only."""
    if config.llm_mode == "lora":
        from peft import LoraConfig, get_peft_model

        targets: list[str] | str = list(config.lora_target_modules)
        if getattr(getattr(llm, "model", None), "visual", None) is not None:
            targets = rf".*\.language_model\..*\.({'|'.join(re.escape(t) for t in targets)})"  # peft: re.fullmatch
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=targets,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(llm, lora)
    llm.requires_grad_(config.llm_mode == "full")
    return llm


def base_llm(llm: nn.Module, llm_mode: str) -> nn.Module:
    """The plain HF model under a policy's LLM: in LoRA mode peft's base model (the adapters injected into it), else
    the LLM itself."""
    return llm.get_base_model() if llm_mode == "lora" else llm


def merged_lora_state(base: nn.Module) -> dict[str, torch.Tensor]:
    """The plain-model state dict of a LoRA-injected model with W + scale * B A merged into each weight."""
    from peft.tuners.lora import LoraLayer

    state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if ".lora_" not in k}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
            state[f"{name}.weight"] = (weight + delta).to(weight.dtype).detach()
    return state
