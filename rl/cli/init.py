"""`pointrl init`: a policy directory (what `PointVLM.save_pretrained` writes, a run's `policy.init`) from real
checkpoints on disk: an HF causal LM or Qwen-VL folder (Qwen2.5-VL, Qwen3-VL), a point-encoder checkpoint (PointLLM /
Point-BERT / ULIP) and, for a text LLM, a CLIP/SigLIP-style vision folder. `PointVLM.from_components` does the loading;
this is its command line, the config it is given and the report. Registered by `rl.cli.main.build_parser`."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from rl.cli.main import _usage_error


def _init_argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with `pointrl init`'s arguments, checked before any weights are read: the paths and numbers
    first, without importing torch or transformers, then what the LLM folder's config.json says."""
    llm, out = Path(args.llm), Path(args.out)
    checks = [
        (llm.is_dir(), f"--llm {llm}: no such directory"),
        ((llm / "config.json").is_file(), f"--llm {llm}: not a Hugging Face model folder (no config.json)"),
        (args.vision is None or Path(args.vision).is_dir(), f"--vision {args.vision}: no such directory"),
        (
            args.point_encoder is None or Path(args.point_encoder).exists(),
            f"--point-encoder {args.point_encoder}: not found",
        ),
        (args.lora_r is None or args.lora_r >= 1, f"--lora-r must be at least 1, got {args.lora_r}"),
        (not out.exists() or out.is_dir(), f"--out {out} is a file; give a directory"),
        (not out.is_dir() or not any(out.iterdir()), f"--out {out} is not empty: choose a new directory"),
    ]
    for name in ("point_groups", "group_size", "point_heads"):
        value = getattr(args, name)
        checks.append((value is None or value >= 1, f"--{name.replace('_', '-')} must be at least 1, got {value}"))
    problem = next((message for ok, message in checks if not ok), None)
    if problem:
        return problem
    from policies.qwen_vl import is_qwen_vl

    # a Qwen-VL folder brings its own tower, whose merger is trained to feed that LLM
    if args.vision and is_qwen_vl(llm):
        return f"--vision: {llm} is a Qwen-VL folder, whose own vision tower makes the image tokens; drop --vision"
    return _llm_type_problem(llm)


def _llm_type_problem(llm: Path) -> str | None:
    """Whether config.json names a causal LM or a Qwen-VL model (a vision tower given as --llm would otherwise fail
    later, on a tokenizer it lacks)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from policies.qwen_vl import QWEN_VL_TYPES

    try:
        model_type = json.loads((llm / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        return f"--llm {llm}: config.json is not a JSON object ({exc})"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in QWEN_VL_TYPES:
        return None
    return f"--llm {llm}: model_type {model_type!r} is neither a causal LM nor a Qwen-VL model {QWEN_VL_TYPES}"


def recorded_grouping(point_encoder: Path) -> dict[str, int]:
    """What the weights leave out (the grouping and the head count), where a pointrl policy records it: its
    `vision.safetensors` sits beside its `pointvlm.json`. {} for any other checkpoint."""
    from policies import PointVLMConfig

    config = point_encoder.parent / "pointvlm.json"
    if point_encoder.name != "vision.safetensors" or not config.is_file():
        return {}
    point = PointVLMConfig.from_dict(json.loads(config.read_text())).point
    return {"num_groups": point.num_groups, "group_size": point.group_size, "heads": point.heads}


def init_config(args: argparse.Namespace):
    """(the PointVLMConfig `from_components` is given, the checkpoint's layout or None). The encoder's sizes are read
    off the checkpoint (so an xyz-only ShapeNet Point-BERT and PointLLM's xyz+rgb one both fit) before any LLM is
    loaded, so a wrong checkpoint fails in seconds; what the weights do not fix comes from the flags, else from the
    policy the checkpoint belongs to (`recorded_grouping`), else `PointEncoderConfig`'s defaults (PointLLM v1.2's)."""
    from policies import ImageEncoderConfig, PointEncoderConfig, PointVLMConfig
    from policies.checkpoints import point_encoder_sizes
    from policies.qwen_vl import is_qwen_vl

    point, layout = PointEncoderConfig(), None
    if args.point_encoder is not None:
        layout, sizes = point_encoder_sizes(args.point_encoder)
        point = replace(point, **sizes, **recorded_grouping(Path(args.point_encoder)))
    given = {"num_groups": args.point_groups, "group_size": args.group_size, "heads": args.point_heads}
    point = replace(point, **{k: v for k, v in given.items() if v is not None})
    if point.width % point.heads:  # found here, before the LLM loads, and named by its flag
        raise ValueError(f"the point encoder's width {point.width} is not divisible by --point-heads {point.heads}")
    image = None  # a text LLM without --vision: points only
    if args.vision is not None:
        image = ImageEncoderConfig(kind="hf", hf_dir=str(args.vision))
    elif is_qwen_vl(args.llm):
        image = ImageEncoderConfig(kind="qwen_vl")  # from_components puts the folder's tower's sizes in
    config = PointVLMConfig(
        point=point,
        image=image,
        fusion_heads=point.heads,  # the cross-attention runs at the point width, with the point encoder's heads
        point_proj_hidden=() if args.projector == "linear" else PointVLMConfig.point_proj_hidden,
        llm_mode="full" if args.lora_r is None else "lora",
        lora_r=args.lora_r or PointVLMConfig.lora_r,
    )
    return config, layout


def _count(n: int) -> str:
    return next(f"{n / size:.3g} {unit}" for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")) if n >= size)


def describe_policy(policy) -> list[str]:
    """One line per part (its parameters, trainable or frozen), then the total. Each parameter counts once, under
    the first part that holds it: a Qwen-VL tower is `image_encoder` (it is also inside `llm`)."""
    parts: dict[str, list[int]] = {}
    for name, param in policy.named_parameters():
        counts = parts.setdefault(name.split(".")[0], [0, 0])
        counts[0] += param.numel()
        counts[1] += param.numel() if param.requires_grad else 0
    lines = []
    for part, (total, trainable) in parts.items():
        state = "trainable" if trainable == total else "frozen" if not trainable else f"{_count(trainable)} trainable"
        lines.append(f"  {part:<14} {_count(total):>8} parameters, {state}")
    total, trainable = (sum(c[i] for c in parts.values()) for i in (0, 1))
    lines.append(
        f"  {'total':<14} {_count(total):>8} parameters: {_count(trainable)} trainable, {_count(total - trainable)} frozen"
    )
    return lines


def cmd_init(args: argparse.Namespace) -> None:
    problem = _init_argument_problem(args)
    if problem:
        _usage_error("init", problem)
    from policies import PointVLM

    try:
        config, layout = init_config(args)
        policy = PointVLM.from_components(args.llm, config, args.point_encoder)
    except (OSError, ValueError) as exc:  # FileNotFoundError is an OSError; transformers raises both for bad folders
        _usage_error("init", "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()))
    policy.save_pretrained(args.out)
    print(f"wrote {args.out}: a {type(policy).__name__}")
    print("\n".join(_built(policy, args, layout) + describe_policy(policy)))
    print(
        "A run's policy.llm_mode, policy.lora_r and policy.train_point_encoder decide what trains when it loads this."
    )


def _built(policy, args: argparse.Namespace, layout: str | None) -> list[str]:
    """What each part was built from."""
    from policies.hf_llm import base_llm

    cfg, p = policy.config, policy.config.point
    llm = base_llm(policy.llm, cfg.llm_mode)
    mode = f"LoRA rank {cfg.lora_r}" if cfg.llm_mode == "lora" else "full fine-tuning"
    if layout is None:
        point = "fresh, no --point-encoder (train it: policy.train_point_encoder=true)"
    else:
        point = f"{args.point_encoder} ({layout} layout)"
    if cfg.image is None:
        image = "none, points only (train with data.use_images=false)"
    elif cfg.image.kind == "hf":
        image = f"{args.vision}, {cfg.image.image_size} px in {cfg.image.patch_size}-px patches"
    else:
        image = "the Qwen-VL folder's own vision tower"
    return [
        f"  llm: {type(llm).__name__} from {args.llm} ({mode})",
        f"  point encoder: {point}; width {p.width}, depth {p.depth}, {p.heads} heads, {p.num_groups} groups of "
        f"{p.group_size} points, {p.point_dims} channels per point",
        f"  image encoder: {image}",
        f"  point projector: {'linear' if not cfg.point_proj_hidden else f'MLP, hidden {cfg.point_proj_hidden}'}",
    ]


def add_init_parser(commands) -> None:
    """The `init` subcommand under `commands` (the subparsers of `pointrl`)."""
    init = commands.add_parser(
        "init",
        help="build a policy directory (a run's policy.init) from an LLM folder and a point-encoder checkpoint",
        description="Writes what PointVLM.save_pretrained writes. The point encoder's width, depth and input "
        "channels are read off the checkpoint; its heads and grouping are flags (defaults: PointLLM v1.2's).",
    )
    init.add_argument(
        "--llm", required=True, metavar="DIR", help="an HF causal-LM folder or a Qwen2.5-VL / Qwen3-VL folder"
    )
    init.add_argument(
        "--point-encoder", metavar="FILE", help="a PointLLM, Point-BERT or ULIP checkpoint (file or folder of shards)"
    )
    init.add_argument("--vision", metavar="DIR", help="a CLIP/SigLIP-style vision folder (text LLMs only)")
    init.add_argument("--out", required=True, metavar="DIR", help="the policy directory to write (new or empty)")
    init.add_argument(
        "--projector",
        choices=("mlp", "linear"),
        default="mlp",
        help="the point tokens' projector into the LLM: PointLLM v1.2's MLP (a PointLLM checkpoint's loads when its "
        "shapes fit) or one linear map (GRCA eq. 4)",
    )
    init.add_argument("--lora-r", type=int, help="record LoRA of this rank on the LLM (default: full fine-tuning)")
    init.add_argument(
        "--point-heads", type=int, help="the point encoder's attention heads (default: a pointrl policy's own, else 6)"
    )
    init.add_argument(
        "--point-groups", type=int, help="point patches per cloud (default: a pointrl policy's own, else 512)"
    )
    init.add_argument("--group-size", type=int, help="points per patch (default: a pointrl policy's own, else 32)")
    init.set_defaults(run=cmd_init)
