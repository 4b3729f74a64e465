"""Load real point-encoder checkpoints (PointLLM, ULIP, Point-BERT) into `PointBertEncoder` and the projector.

Each layout is a key prefix over the same Point-BERT parameter names:
  PointLLM (HF model files)       model.point_backbone.*   and its projector model.point_proj.*
  ULIP / ULIP-2 (`state_dict`)    module.point_encoder.*
  Point-BERT pre-training         module.transformer_q.*   (inside `base_model`)
  Point-BERT wrapped / fine-tuned base_model.* or module.*
  pointrl's own                   bare names (cls_token, encoder.first_conv.0.weight, ...)
Point-BERT training heads inside those prefixes (cls_head*, lm_head, mask_token) are not part of the
encoder and are skipped; any other missing, unexpected or wrongly shaped key is an error that lists them.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

LAYOUT_PREFIXES = (
    ("pointllm", "model.point_backbone."),
    ("ulip", "module.point_encoder."),
    ("ulip", "point_encoder."),
    ("pointbert", "module.transformer_q."),
    ("pointbert", "transformer_q."),
    ("pointbert", "module.base_model."),
    ("pointbert", "base_model."),
    ("pointbert", "module."),
    ("pointrl", ""),
)
POINTLLM_PROJECTOR_PREFIX = "model.point_proj."
TRAINING_HEADS = ("cls_head_finetune.", "cls_head.", "lm_head.", "mask_token")
WRAPPER_KEYS = ("state_dict", "base_model", "model", "module")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"{path}: directory holds no *.safetensors / *.bin / *.pt / *.pth checkpoint files")
    raise FileNotFoundError(f"{path}: checkpoint not found")


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend through training-script wrappers ({'state_dict': ...}, {'base_model': ...}, ...) to the tensors."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"{path}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_state_dict(path: str | Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """Tensors whose names start with one of `prefixes`, from a .safetensors / .pt / .pth / .bin file or a
    directory of shards. Torch files load with weights_only=True (no pickled code runs)."""
    state: dict[str, torch.Tensor] = {}
    for file in _checkpoint_files(Path(path)):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as f:
                state.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)})
        elif file.suffix in TORCH_SUFFIXES:
            try:
                # ULIP and Point-BERT save their argparse options beside the weights
                with torch.serialization.safe_globals([argparse.Namespace]):
                    raw = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # torch raises several types for corrupt or non-torch files
                raise ValueError(f"{file}: cannot be read as a torch checkpoint ({err})") from err
            state.update({k: v for k, v in _unwrap(raw, file).items() if k.startswith(prefixes)})
        else:
            raise ValueError(f"{file}: unknown checkpoint suffix {file.suffix!r} (want .safetensors, {TORCH_SUFFIXES})")
    return state


def detect_layout(keys: list[str] | set[str]) -> tuple[str, str]:
    """(layout name, prefix) of the first known layout that holds a `cls_token` under its prefix."""
    for name, prefix in LAYOUT_PREFIXES:
        if f"{prefix}cls_token" in keys:
            return name, prefix
    sample = sorted(keys)[:8]
    raise ValueError(f"no known point-encoder layout: no '<prefix>cls_token' among keys (first keys: {sample})")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if not k.startswith(TRAINING_HEADS)}


def _mismatches(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    expected = module.state_dict()
    # num_batches_tracked only counts BatchNorm updates; older checkpoints lack it and it never affects outputs
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
            problems.append(f"{label}: {shown}")
    return problems


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load `state` into `module`, raising one error that lists every problem."""
    problems = _mismatches(module, state)
    if problems:
        raise ValueError(f"{source} does not fit {type(module).__name__}:\n  " + "\n  ".join(problems))
    module.load_state_dict(state, strict=False)


def _point_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str, str]:
    """(the checkpoint's point-encoder and PointLLM projector tensors, its layout, the encoder's key prefix)."""
    # read only the prefixed tensors first: a PointLLM checkpoint also holds a whole LLM we do not want in memory
    state = read_state_dict(path, tuple(p for _, p in LAYOUT_PREFIXES if p) + (POINTLLM_PROJECTOR_PREFIX,))
    if not any(k.endswith("cls_token") for k in state):
        state = read_state_dict(path)
    layout, prefix = detect_layout(set(state))
    return state, layout, prefix


def point_encoder_sizes(path: str | Path) -> tuple[str, dict[str, int]]:
    """(layout, the `PointEncoderConfig` sizes the checkpoint's tensors fix: width, depth, encoder_dims, point_dims).
    The head count and the grouping (num_groups, group_size) leave no trace in the weights: the caller gives them."""
    state, layout, prefix = _point_state(path)
    encoder = _strip(state, prefix)
    need = ("cls_token", "reduce_dim.weight", "encoder.first_conv.0.weight")
    if missing := [k for k in need if k not in encoder]:
        raise ValueError(f"{path} ({layout} layout, prefix '{prefix}'): no {missing}; not a Point-BERT encoder")
    width, encoder_dims = encoder["reduce_dim.weight"].shape
    blocks = {int(m.group(1)) for k in encoder if (m := re.match(r"blocks\.blocks\.(\d+)\.", k))}
    sizes = dict(
        width=width,
        depth=len(blocks),
        encoder_dims=encoder_dims,
        point_dims=encoder["encoder.first_conv.0.weight"].shape[1],
    )
    return layout, sizes


def load_point_checkpoint(path: str | Path, encoder: nn.Module, projector: nn.Module | None = None) -> str:
    """Load a point-encoder checkpoint of any known layout into `encoder`; returns the layout name.

    For PointLLM checkpoints the projector (`model.point_proj.*`) is loaded too when `projector` is given
    and its shapes match (they do not when the LLM's hidden size differs from PointLLM's): a projector
    left untouched is reported with a warning, never silently.
    """
    state, layout, prefix = _point_state(path)
    load_into(encoder, _strip(state, prefix), f"{path} ({layout} layout, prefix '{prefix}')")
    if projector is not None and layout == "pointllm":
        proj_state = _strip(state, POINTLLM_PROJECTOR_PREFIX)
        if set(proj_state) == {"weight", "bias"}:  # PointLLM v1.1: a single Linear, ours is Sequential(Linear)
            proj_state = {f"0.{k}": v for k, v in proj_state.items()}
        problems = _mismatches(projector, proj_state)
        if problems:
            warnings.warn(f"{path}: PointLLM projector not loaded ({'; '.join(problems)}); it keeps its initialisation")
        else:
            projector.load_state_dict(proj_state, strict=False)
    return layout


def vision_state(policy: nn.Module, parts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """`vision.safetensors`' tensors: every present part's state as `<part>.<key>`, on the CPU, without an HF image
    tower's own weights (they are saved in its own folder)."""
    return {
        f"{part}.{k}": v.detach().cpu().contiguous()
        for part in parts
        if getattr(policy, part) is not None
        for k, v in getattr(policy, part).state_dict().items()
        if not (part == "image_encoder" and k.startswith("tower."))
    }


def load_vision_state(policy: nn.Module, path: Path, parts: tuple[str, ...], optional: tuple[str, ...]) -> None:
    """`vision_state` read back strictly into each present part. A tensor or part named in `optional` (what a config
    override adds to a policy saved without it) that the file lacks keeps its fresh weights."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    fresh = vision_state(policy, parts)
    state |= {
        k: v for k, v in fresh.items() if k not in state and any(k == o or k.startswith(o + ".") for o in optional)
    }
    for part in parts:
        module = getattr(policy, part)
        if module is None:
            continue
        part_state = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        if part == "image_encoder" and getattr(module, "tower", None) is not None:
            part_state.update({f"tower.{k}": v for k, v in module.tower.state_dict().items()})
        load_into(module, part_state, f"{path} [{part}]")


def load_trainable_state(policy: nn.Module, state: dict[str, torch.Tensor], share: bool = False) -> None:
    """`PointVLM.load_trainable_state_dict`: install exactly the trainable tensors (the names of the parameters that
    require grad), copied, or with `share` taking the given tensors' memory where dtype, shape and device agree."""
    expected = {name for name, p in policy.named_parameters() if p.requires_grad}
    if set(state) != expected:
        raise ValueError(
            f"trainable state mismatch: missing {sorted(expected - set(state))[:10]}, "
            f"unexpected {sorted(set(state) - expected)[:10]}"
        )
    if not share:
        policy.load_state_dict(state, strict=False)
        return
    params = dict(policy.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            param = params[name]
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)}, the parameter's {tuple(param.shape)}")
            if tensor.dtype == param.dtype and tensor.device == param.device:
                param.data = tensor
            else:
                param.copy_(tensor)
