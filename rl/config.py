"""The one typed configuration tree of the RL runs: dataclass sections, YAML files under rl/configs/ (a file may say
`extends: base.yaml`), `section.key=value` command-line overrides, strict validation at start, and `--help`.

Every field is one `setting(default, doc, check, choices)` line, so adding a key is a one-line change; `--help`, the
type checks and the range checks are all generated from those lines.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from rewards.schema import DEFAULT_BINS, FIELDS, Quant, REWARDS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ALGORITHMS = ("grca", "grpo", "spa", "dpo", "sft")
LLM_MODES = ("full", "lora", "frozen")  # the same as policies.inputs (a test checks it), kept here to stay torch-free
LLM_DTYPES = ("float32", "bfloat16", "float16")  # likewise policies.inputs.LLM_DTYPES
ROUTABLE_FIELDS = tuple(name for name in FIELDS if name in REWARDS)  # output fields with both a span and a reward
CHECKS = {
    "> 0": lambda v: v > 0,
    ">= 0": lambda v: v >= 0,
    ">= 2": lambda v: v >= 2,
    "0 or >= 2": lambda v: v == 0 or v >= 2,
    "in [0, 1]": lambda v: 0 <= v <= 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
    "in [0, 1)": lambda v: 0 <= v < 1,
}


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key path and the file or override it came from."""


def setting(default: Any, doc: str, check: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A config field: its default, the one-line doc `--help` prints, an optional range check (a key of CHECKS,
    applied to each element of a list or dict) and the allowed strings of an enum."""
    metadata = {"doc": doc, "check": check, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """what this run is and where it writes"""

    name: str = setting("grca", "run name (labels the metrics, the Ray job and TensorBoard)")
    dir: str = setting("runs/grca", "run directory: metrics.jsonl, TensorBoard events, checkpoints, evaluations")
    seed: int = setting(0, "seed of the prompt order, sampling and initialization", ">= 0")
    steps: int = setting(20, "RL steps (prompts -> rollouts -> rewards -> update -> weight sync)", "> 0")
    ray_address: str | None = setting(None, "Ray cluster to join; null: $RAY_ADDRESS when set, else start a local Ray")
    num_cpus: float | None = setting(None, "CPUs of a locally started Ray; null: all of the machine's", "> 0")
    log_every: int = setting(1, "print a progress line every k steps", "> 0")


@dataclass
class PolicyConfig:
    """the Point-VLM that trains"""

    init: str | None = setting(None, "policy directory to start from; null: build the tiny local policy")
    llm_mode: str = setting("full", "which LLM weights train", choices=LLM_MODES)
    lora_r: int = setting(16, "LoRA rank when llm_mode is lora", "> 0")
    dtype: str = setting("float32", "LLM weight dtype (the encoders always run in float32)", choices=LLM_DTYPES)
    train_point_encoder: bool = setting(False, "train the point encoder too (on for a from-scratch tiny encoder)")
    hidden_size: int = setting(64, "LLM width of the tiny policy built when init is null", "> 0")
    num_layers: int = setting(2, "LLM layers of the tiny policy built when init is null", "> 0")


@dataclass
class DataConfig:
    """the prompts and their targets"""

    dir: str | None = setting(None, "a `pointrl synth` dataset directory; null: generate samples on the fly")
    train_size: int = setting(256, "training samples generated on the fly", "> 0")
    eval_size: int = setting(32, "held-out samples generated on the fly", "> 0")
    seed: int = setting(0, "seed of the generated samples", ">= 0")
    num_points: int = setting(1024, "points per cloud", "> 0")
    image_size: int = setting(128, "side of the rendered image in pixels", "> 0")
    use_images: bool = setting(True, "give the policy the rendered image as well as the points")
    num_kpts: int = setting(16, "keypoints per target (kpts2d and kpts3d) for generated samples", "> 0")


@dataclass
class RolloutConfig:
    """the Ray actors that sample G outputs per prompt"""

    backend: str = setting("hf", "generation engine", choices=("hf", "vllm"))
    num_workers: int = setting(2, "rollout worker actors", "> 0")
    cpus_per_worker: float = setting(0.5, "CPUs reserved per rollout worker (fractions share a core)", ">= 0")
    group_size: int = setting(4, "G: sampled outputs per prompt", ">= 2")
    prompts_per_step: int = setting(4, "prompts per step (a step scores prompts_per_step * G outputs)", "> 0")
    temperature: float = setting(1.0, "sampling temperature", "> 0")
    top_p: float = setting(1.0, "nucleus sampling probability mass", "in (0, 1]")
    max_new_tokens: int = setting(320, "generated tokens per output at most", "> 0")
    max_staleness: int = setting(0, "policy versions a rollout may lag the learner (0: strictly on-policy)", ">= 0")


@dataclass
class RewardConfig:
    """how rollouts are scored"""

    mode: str = setting("serve", "a Ray Serve handle, in process, or HTTP to url", choices=("serve", "local", "http"))
    url: str | None = setting(None, "the reward service's base URL (needed when mode is http)")
    timeout_s: float = setting(30.0, "seconds a reward call may take before its samples count as missing", "> 0")
    replicas: int = setting(1, "replicas of the Ray Serve reward deployment", "> 0")
    cpus_per_replica: float = setting(0.25, "CPUs reserved per reward replica", ">= 0")
    bins: int = setting(DEFAULT_BINS, "coordinate bins of the output schema (0: continuous coordinates)", "0 or >= 2")
    field_weights: dict[str, float] = setting({**dict.fromkeys(REWARDS, 1.0), "rpc": 0.15},
                                              "weight of each reward in broadcast GRPO's one scalar", ">= 0")


@dataclass
class AlgoConfig:
    """the algorithm and its advantage and loss constants"""

    name: str = setting("grca", "routed GRPO, broadcast GRPO, SPA, DPO or SFT", choices=ALGORITHMS)
    rpc_weight: float = setting(0.15, "lambda: weight of standardized RPC in the background advantage (eq. 14)", ">= 0")
    routed_fields: list[str] = setting(["bbox2d", "bbox3d", "kpts2d", "kpts3d"],
                                       "fields whose tokens get their own advantage (eq. 10)", choices=ROUTABLE_FIELDS)
    clip_eps: float = setting(0.2, "epsilon of the clipped probability ratio (eq. 15)", "> 0")
    clip_eps_high: float | None = setting(None, "upper clip epsilon; null: clip_eps", "> 0")
    kl_beta: float = setting(0.0, "beta of the k3 KL to a frozen reference (0: no reference model)", ">= 0")


@dataclass
class LearnerConfig:
    """the Ray Train learner and its optimizer"""

    num_workers: int = setting(1, "Ray Train workers (DDP over gloo on CPU)", "> 0")
    cpus_per_worker: float = setting(1.0, "CPUs reserved per learner worker", ">= 0")
    lr: float = setting(1e-5, "peak AdamW learning rate", "> 0")
    weight_decay: float = setting(0.0, "AdamW weight decay", ">= 0")
    betas: list[float] = setting([0.9, 0.999], "AdamW (beta1, beta2)", "in [0, 1)")
    warmup_steps: int = setting(0, "optimizer steps of linear LR warm-up", ">= 0")
    schedule: str = setting("constant", "LR schedule after the warm-up", choices=("constant", "cosine", "linear"))
    grad_clip: float = setting(1.0, "largest global gradient norm", "> 0")
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step", "> 0")
    micro_batch_size: int = setting(8, "samples per forward/backward on each learner worker", "> 0")
    epochs: int = setting(1, "optimization epochs over one rollout batch", "> 0")


@dataclass
class CheckpointConfig:
    """checkpoints through Ray Train"""

    every: int = setting(10, "save a checkpoint every k steps", "> 0")
    keep: int = setting(2, "newest checkpoints kept", "> 0")
    resume: bool = setting(True, "continue from the newest checkpoint in run.dir when there is one")


@dataclass
class EvalConfig:
    """held-out evaluation"""

    every: int = setting(0, "evaluate every k steps (0: only at the end)", ">= 0")
    greedy: bool = setting(True, "decode greedily (else with the rollout sampling settings)")
    max_new_tokens: int = setting(320, "generated tokens per output at most", "> 0")
    split: str = setting("test", "dataset split evaluated when data.dir is set")
    reliance: bool = setting(True, "also evaluate with the cloud 3D-masked and swapped (the encoder-reliance gap)")


@dataclass
class SpaConfig:
    """SPA: clean vs 3D-corrupted input, same response"""

    beta: float = setting(1.0, "beta scaling log P(y|x) - log P(y|x') (the paper's eq. 5 has none, i.e. 1)", "> 0")
    nll_weight: float = setting(1.0, "weight of the NLL anchor on the clean input (the paper gives no number)", ">= 0")
    corruption: str = setting("mask", "how x' is made (Table 2: mask is best)", choices=("mask", "gaussian", "drop"))
    mask_ratio: float = setting(0.5, "share of FPS + kNN point groups masked (the paper: best in 25-50%)", "in [0, 1]")
    noise_std: float = setting(0.01, "std of the Gaussian noise added to xyz", ">= 0")
    drop_ratio: float = setting(0.5, "share of points dropped", "in [0, 1]")


@dataclass
class DpoConfig:
    """DPO against a frozen reference"""

    beta: float = setting(0.1, "beta of the DPO loss", "> 0")
    pairs_file: str | None = setting(None, 'JSONL of {"uid", "chosen", "rejected"}; null: each group\'s highest vs '
                                           "lowest total reward")


@dataclass
class SftConfig:
    """supervised fine-tuning (train_sft, and train_grca's warm-up when policy.init is null)"""

    steps: int = setting(60, "SFT optimizer steps", "> 0")
    lr: float = setting(3e-4, "SFT learning rate", "> 0")
    batch_size: int = setting(8, "samples per SFT step", "> 0")


@dataclass
class Config:
    """The whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    spa: SpaConfig = field(default_factory=SpaConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    sft: SftConfig = field(default_factory=SftConfig)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` as a string; this loader reads it as the float everyone means."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+.0123456789"))


def config_to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts and lists (what save_config writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the exact config as YAML (a run directory's record); load_config(path) gives it back equal."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _fail(path: str, problem: str, origins: dict[str, str]) -> ConfigError:
    cuts = [match.start() for match in re.finditer(r"[.\[]|$", path)]  # where each enclosing key path ends
    source = next((origins[path[:cut]] for cut in reversed(cuts) if path[:cut] in origins), "the defaults")
    return ConfigError(f"{path}: {problem} (from {source})")


def _show(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _type_name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) and get_origin(kind) is None else str(kind)  # list[float] as is


def _typed(value: Any, kind: Any, path: str, meta: dict, origins: dict[str, str]) -> Any:
    """`value` checked as type `kind` (ints widen to floats) with meta's choices and range check on each leaf."""
    expected = _type_name(kind)
    if isinstance(kind, types.UnionType):  # the only unions here are `X | None`
        if value is None:
            return None
        kind = next(arg for arg in get_args(kind) if arg is not type(None))
    container = get_origin(kind)
    if container in (list, dict):
        if not isinstance(value, container):
            raise _fail(path, f"expected {expected}, got {_show(value)}", origins)
        if container is list:
            return [_typed(item, get_args(kind)[0], f"{path}[{i}]", meta, origins) for i, item in enumerate(value)]
        return {key: _typed(item, get_args(kind)[1], f"{path}.{key}", meta, origins) for key, item in value.items()}
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(path, f"expected {expected}, got {_show(value)}", origins)
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(path, f"expected a finite number, got {value!r}", origins)
    if meta["choices"] and value not in meta["choices"]:
        raise _fail(path, f"expected one of {', '.join(meta['choices'])}, got {value!r}", origins)
    if meta["check"] and not CHECKS[meta["check"]](value):
        raise _fail(path, f"expected {meta['check']}, got {value!r}", origins)
    return value


def _build(cls: type, raw: Any, path: str, origins: dict[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise _fail(path, f"expected a mapping of keys, got {_show(raw)}", origins)
    hints, values = get_type_hints(cls), {}
    for item in dataclasses.fields(cls):
        where, kind = f"{path}.{item.name}".lstrip("."), hints[item.name]
        if dataclasses.is_dataclass(kind):
            values[item.name] = _build(kind, raw[item.name], where, origins)
        else:
            values[item.name] = _typed(raw[item.name], kind, where, item.metadata, origins)
    return cls(**values)


def _merge(tree: dict, layer: Any, source: str, origins: dict[str, str], prefix: str = "") -> None:
    """Write `layer` over `tree`: nested mappings merge, and every key must already be in `tree` (the defaults)."""
    if not isinstance(layer, dict):
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"{where}: expected a mapping, got {_show(layer)} in {source}")
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if key not in tree:
            close = difflib.get_close_matches(str(key), [str(k) for k in tree], n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"known: {', '.join(map(str, tree))}"
            raise ConfigError(f"unknown key '{path}' in {source} ({hint})")
        if isinstance(tree[key], dict) and isinstance(value, dict):
            _merge(tree[key], value, source, origins, f"{path}.")
        else:
            tree[key] = value
            origins[path] = source


def _find(path: str | Path) -> Path:
    for candidate in (Path(path), CONFIG_DIR / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no such config file: {path} (looked in the current directory and in {CONFIG_DIR})")


def _file_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Any, str]]:
    """A file's layers, its `extends` chain (relative to the file) first."""
    if not path.is_file():
        raise ConfigError(f"no such config file: {path} (extended by {seen[-1]})")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself through {' -> '.join(map(str, seen))}")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    data = {} if data is None else data
    base = data.pop("extends", None) if isinstance(data, dict) else None
    if base is None:
        return [(data, str(path))]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: extends: expected a file name, got {_show(base)}")
    return _file_layers(path.parent / base, (*seen, path.resolve())) + [(data, str(path))]


def _field_kind(keys: list[str]) -> Any:
    """The annotation at section.key (None when the path is deeper or unknown)."""
    section = get_type_hints(Config).get(keys[0])
    return get_type_hints(section).get(keys[1]) if len(keys) == 2 and section else None


def _override_layer(text: str) -> dict:
    """`section.key=value` as a nested mapping; the value is YAML, except that a text field keeps the text typed."""
    key, equals, raw = text.partition("=")
    keys = key.strip().split(".")
    if not equals or len(keys) < 2 or "" in keys:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. rollout.group_size=8")
    kind = _field_kind(keys)
    wants_text = kind is str or (isinstance(kind, types.UnionType) and str in get_args(kind))
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        if not wants_text:
            raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
        value = raw
    if wants_text and value is not None and not isinstance(value, str):
        value = raw
    for name in reversed(keys):
        value = {name: value}
    return value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """The defaults, then the YAML file at `path` (its `extends` chain first; a bare name is looked up in
    rl/configs/), then each `section.key=value` override; validated whole, or a ConfigError."""
    layers = _file_layers(_find(path)) if path is not None else []
    return _validated(layers + [(_override_layer(text), f"override {text!r}") for text in overrides])


def config_from_dict(data: dict) -> Config:
    """A Config from config_to_dict's output (how it travels to Ray workers), validated like a file."""
    return _validated([(data, "the given dict")])


def _validated(layers: list[tuple[Any, str]]) -> Config:
    """Each (mapping, source) layer written over the defaults in order, then typed and checked whole."""
    raw, origins = config_to_dict(Config()), {}
    for layer, source in layers:
        _merge(raw, layer, source, origins)
    cfg = _build(Config, raw, "", origins)
    if cfg.reward.mode == "http" and cfg.reward.url is None:
        raise _fail("reward.mode", "is http, so reward.url must be the service's URL, but it is null", origins)
    if len(cfg.learner.betas) != 2:
        raise _fail("learner.betas", f"expected two values (beta1, beta2), got {cfg.learner.betas}", origins)
    return cfg


def describe(cfg: Config) -> str:
    """Every section and key with its type, its value in `cfg`, its doc, choices and range (the --help listing)."""
    lines = []
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        hints = get_type_hints(type(part))
        lines.append(f"\n{section.name}:  # {type(part).__doc__}")
        for item in dataclasses.fields(part):
            kind = _type_name(hints[item.name])
            notes = [item.metadata["doc"]]
            notes += [f"one of {', '.join(item.metadata['choices'])}"] if item.metadata["choices"] else []
            notes += [item.metadata["check"]] if item.metadata["check"] else []
            value = json.dumps(getattr(part, item.name), separators=(",", ":"))  # one column; also valid YAML
            lines.append(f"  {item.name:<17} {kind:<17} {value:<12} {'; '.join(notes)}")
    return "\n".join(lines)


def parse_cli(argv: Sequence[str], default_config: str) -> Config:
    """`[--config PATH] [section.key=value ...]` -> Config. `--help` prints every key with its value under that
    config and exits 0; a bad config prints its problem and exits 2."""
    config_path, overrides, wants_help, args = default_config, [], False, list(argv)
    try:
        while args:
            arg = args.pop(0)
            if arg in ("-h", "--help"):
                wants_help = True
            elif arg == "--config":
                if not args:
                    raise ConfigError("--config: expected a path")
                config_path = args.pop(0)
            elif arg.startswith("--config="):
                config_path = arg.removeprefix("--config=")
            elif arg.startswith("-"):
                raise ConfigError(f"unknown option {arg!r}: expected [--config PATH] [section.key=value ...]")
            else:
                overrides.append(arg)
        cfg = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        sys.exit(2)
    if wants_help:
        print(f"usage: {Path(sys.argv[0]).name} [--config PATH] [section.key=value ...]\n"
              f"Values below: {config_path}{' + ' + ' '.join(overrides) if overrides else ''}. "
              "An override's value is YAML: algo.routed_fields=[bbox3d,kpts3d], reward.url=null.")
        print(describe(cfg))
        sys.exit(0)
    return cfg


def policy_overrides(cfg: Config) -> dict:
    """What the run changes in a loaded policy's config; learner and rollout workers apply the same, so that the
    trainable tensors the learner publishes are exactly the ones the workers hold."""
    return {"llm_mode": cfg.policy.llm_mode, "lora_r": cfg.policy.lora_r, "llm_dtype": cfg.policy.dtype,
            "train_point_encoder": cfg.policy.train_point_encoder}


def run_quant(cfg: Config) -> Quant:
    """The coordinate quantization of a run: prompts, targets, rewards and evaluation all use this one."""
    return Quant(bins=cfg.reward.bins)
