"""A tiny Point-VLM for tests and the CPU demo, built locally in seconds with no download: a byte-level BPE
tokenizer trained on a small built-in corpus and a 2-layer `Qwen2ForCausalLM`."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from policies.image_encoder import ImageEncoderConfig
from policies.inputs import PointVLMConfig
from policies.point_encoder import PointEncoderConfig
from policies.vlm import SPECIAL_TOKENS, PointVLM

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CATEGORIES = (
    "chair table mug lamp bottle bed sofa shelf bench monitor car airplane bowl cup vase plant guitar "
    "bathtub desk door keyboard laptop piano stool toilet tent dresser cabinet bookshelf"
).split()
COLOURS = "red green blue yellow orange purple pink brown black white gray grey silver gold wooden".split()
WORDS = (
    "a an the this that these those is are was it its of with and or on in at to for from by as not no yes "
    "what which where how many much does do has have there object shape point cloud image view camera "
    "answer question describe description colour color size small medium large tall short wide narrow long "
    "round square flat thin thick leg legs arm arms seat back top bottom left right front side base handle "
    "part parts one two three four five six seven eight nine ten several box keypoint keypoints coordinate "
    "coordinates bounding integer bins please give only json output format return following keys category "
    "closest most likely options option choose choices height width depth higher lower above below than "
    "I you he she we they me him her us them my your his our their who whom whose why when then here now "
    "be been being am were will would shall should can could may might must need used make made see seen "
    "look looks like same different other another each every all any some none both either neither more "
    "less few first second third last next up down over under between inside outside near far into onto "
    "wood metal plastic glass fabric leather stone paper surface edge corner center middle end open closed "
    "light dark bright shiny smooth rough soft hard heavy light empty full high low big little new old good "
    "kitchen office room house car road table furniture vehicle container tool instrument electronic device "
    "if else because so but however also very too quite just only even still yet again never always often"
).split()
SCHEMA_KEYS = ("answer", "description", "bbox2d", "bbox3d", "kpts2d", "kpts3d")


def _corpus() -> list[str]:
    """Sentences that exercise the schema as the targets write it (compact JSON), the prompt's format line, whole
    numbers, punctuation and the demo's vocabulary: BPE merges what it sees often, so these become few tokens."""
    lines = [" ".join(WORDS), " ".join(CATEGORIES), " ".join(COLOURS)]
    pairs = list(itertools.product(COLOURS, CATEGORIES))
    lines += [f"a {c} {k} with four legs. What is this object? It is a {k}." for c, k in pairs]
    lines += [
        f'{{"answer":"{k}","description":"a {c} {k}","bbox2d":[{i % 64},{i * 7 % 64},{i * 13 % 1000},999],'
        f'"bbox3d":[{i % 10},0,5,9,{i % 99},999],"kpts2d":[[{i},{i * 3 % 1000}]],"kpts3d":[[1,{i % 64},3]]}}'
        for i, (c, k) in enumerate(pairs)
    ]
    lines += [" ".join(str(n) for n in range(1000))] * 8  # whole numbers up to 999 become one token each
    lines += [
        "Answer in JSON: answer, description, bbox2d [x1, y1, x2, y2], bbox3d [xmin, ymin, zmin, xmax, ymax, "
        "zmax], kpts2d 4 [u, v] and kpts3d 4 [x, y, z]. Coordinates: integer bins 0-63: 2D over the image, 3D "
        "over x in [-1, 1], y in [-1, 1], z in [-1, 1]."
    ] * 20
    lines += [" ".join(f'"{key}":' for key in SCHEMA_KEYS), "{ } [ ] ( ) , . : ; ? ! ' \" - _ / + = < > | \n"]
    return lines


def build_tiny_tokenizer(vocab_size: int = 2048):
    """A byte-level BPE whose merges include every whole number up to 999 (a coordinate bin is one token) and the
    schema's keys and punctuation, wrapped as a `PreTrainedTokenizerFast` with pad/eos, the Point-VLM special tokens
    and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=False), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END, *SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START, *SPECIAL_TOKENS],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def tiny_config(**overrides) -> PointVLMConfig:
    """32 groups x 16 points, width 64, 2 blocks; a 32x32 image in 16 patches; small projectors."""
    base = PointVLMConfig(
        point=PointEncoderConfig(num_groups=32, group_size=16, width=64, depth=2, heads=4, encoder_dims=64),
        image=ImageEncoderConfig(kind="patch", image_size=32, patch_size=8, width=64, depth=1, heads=4),
        fusion_heads=4,
        point_proj_hidden=(128,),
        image_proj_hidden=(128,),
        lora_r=8,
        lora_alpha=16,
    )
    return PointVLMConfig.from_dict({**base.to_dict(), **overrides})


def tiny_llm_config(tokenizer, hidden_size: int = 64, num_hidden_layers: int = 2, **sizes):
    """The `Qwen2Config` of the tiny policy's LLM over `tokenizer` (`build_tiny_tokenizer`): its vocabulary, eos and
    pad ids, no bos, tied embeddings, 4096 positions; `hidden_size` x `num_hidden_layers` layers with 4 attention
    heads (2 key-value heads) and a 4x MLP unless `sizes` (other Qwen2Config size fields) say otherwise, as for
    infra/gpu_smoke.py's medium model (a `vocab_size` above the tokenizer's gives the embedding and LM head a real
    model's size; the ids past the tokenizer are never produced by it)."""
    from transformers import Qwen2Config

    shape = {
        "vocab_size": len(tokenizer),
        "intermediate_size": 4 * hidden_size,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        **sizes,
    }
    return Qwen2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )


def build_tiny_policy(
    out_dir: str | Path | None = None,
    seed: int = 0,
    config: PointVLMConfig | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    **llm_sizes,
) -> PointVLM:
    """The tiny policy (hidden 64, 2 layers, 4 heads by default; `llm_sizes`: other `tiny_llm_config` sizes),
    deterministic for `seed`; saved to `out_dir` if given. The caller's global torch RNG state is left as it was."""
    from transformers import Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer()
    llm_config = tiny_llm_config(tokenizer, hidden_size=hidden_size, num_hidden_layers=num_layers, **llm_sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = PointVLM(config or tiny_config(), Qwen2ForCausalLM(llm_config), tokenizer)
    if out_dir is not None:
        policy.save_pretrained(out_dir)
    return policy


# What a tiny folder of each Qwen-VL family sets beyond the sizes they share: (config class, model class, M-RoPE's
# share of head_dim / 2 frequencies for height and for width out of 64 (the released models' 16:24:24 and 24:20:20),
# vision config, text config). Qwen3-VL's tower takes one deepstack merger here, after its first block, and a learned
# 8x8 position grid (resampled to each image's grid); Qwen2.5-VL's windowed attention runs in its first block.
TINY_QWEN_VL = {
    "qwen2_5_vl": (
        "Qwen2_5_VLConfig",
        "Qwen2_5_VLForConditionalGeneration",
        24,
        {"window_size": 16, "fullatt_block_indexes": [1]},
        {},
    ),
    "qwen3_vl": (
        "Qwen3VLConfig",
        "Qwen3VLForConditionalGeneration",
        20,
        {"num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        {"mrope_interleaved": True},
    ),
}


def build_tiny_qwen_vl(
    out_dir: str | Path, seed: int = 0, hidden_size: int = 64, num_layers: int = 2, family: str = "qwen2_5_vl"
) -> Path:
    """A tiny random Qwen-VL checkpoint folder of `family` (config.json `model_type`: qwen2_5_vl or qwen3_vl) in the
    real on-disk layout (safetensors, tokenizer with Qwen's vision tokens, `preprocessor_config.json`), built with
    transformers' own classes: text hidden 64 x 2 layers (4 heads of 16) with M-RoPE, a 2-block vision tower (width
    32, 4-pixel patches merged 2x2, so one image token per 8x8 pixels). Load it with
    `PointVLM.from_components(out_dir, config)`. Returns `out_dir`."""
    import transformers
    from transformers import Qwen2VLImageProcessorPil

    if family not in TINY_QWEN_VL:
        raise ValueError(f"family must be one of {sorted(TINY_QWEN_VL)}, got {family!r}")
    config_class, model_class, spatial, vision, rope = TINY_QWEN_VL[family]
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"], special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids
    heads = 4
    half = hidden_size // heads // 2
    config = getattr(transformers, config_class)(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=2,
            head_dim=hidden_size // heads,  # what Qwen2.5-VL derives; Qwen3-VL's config would take 128
            max_position_embeddings=4096,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                # (temporal, height, width) frequencies
                "mrope_section": [half - 2 * (half * spatial // 64), *[half * spatial // 64] * 2],
                **rope,
            },
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            **vision,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_class)(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # min 8x8 pixels, max 64x64 (the 3B model's processor: 56x56 to 28x28x1280)
    processor = Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=64, max_pixels=4096
    )
    processor.save_pretrained(out_dir)
    return Path(out_dir)
