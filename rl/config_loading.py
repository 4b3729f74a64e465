"""How YAML files and command-line overrides become a validated `rl.config.Config`.

Files under rl/configs/ may say `extends: base.yaml`; `section.key=value` overrides are read as YAML; the merged tree
is checked whole at start (unknown keys with a suggestion, types, choices, ranges), every error naming the key and
the file or override it came from. `parse_cli` is what every entry script calls; `--help` lists every key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from rl.config import CHECKS, CONFIG_DIR, MOVED_KEYS, Config, ConfigError, recompute_reasons


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-5` as a string; this loader reads it as the float everyone means."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+.0123456789")
)


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
        if path in MOVED_KEYS:
            raise ConfigError(f"{path} in {source}: set {MOVED_KEYS[path]} instead (that value has one home)")
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
    recipe = _recipe_layer(raw["algo"]["name"])
    if recipe:  # the algorithm's own values go under every layer: the run's files and overrides still win
        raw, origins = config_to_dict(Config()), {}
        for layer, source in [(recipe, f"algo.name={raw['algo']['name']}'s recipe"), *layers]:
            _merge(raw, layer, source, origins)
    cfg = _build(Config, raw, "", origins)
    if cfg.reward.mode == "http" and cfg.reward.url is None:
        raise _fail("reward.mode", "is http, so reward.url must be the service's URL, but it is null", origins)
    if cfg.rollout.min_new_tokens > cfg.rollout.max_new_tokens:
        raise _fail(
            "rollout.min_new_tokens",
            f"is {cfg.rollout.min_new_tokens}, more than rollout.max_new_tokens={cfg.rollout.max_new_tokens}",
            origins,
        )
    if len(cfg.learner.betas) != 2:
        raise _fail("learner.betas", f"expected two values (beta1, beta2), got {cfg.learner.betas}", origins)
    from rl.algorithms import algorithm  # imports torch: a config is checked whole only where a run starts

    learns = algorithm(cfg.algo.name)
    if cfg.rollout.top_p < 1 and learns.rollouts(cfg):
        raise _fail(
            "rollout.top_p",
            f"is {cfg.rollout.top_p} with algo.name={cfg.algo.name}: top-p < 1 is not "
            "supported for RL, because the behaviour log-probs would be those of the truncated distribution, "
            "which the learner does not recompute (set rollout.top_p=1; rollout.temperature sharpens "
            "sampling)",
            origins,
        )
    _check_policy_gradient_options(cfg, learns.clips_ratio, origins)
    _check_correction(cfg, learns.clips_ratio, origins)
    _check_precision(cfg, learns.clips_ratio, origins)
    return cfg


def _recipe_layer(name: object) -> dict:
    """`algorithm(name).recipe` ({"section.key": value}) as a nested layer; {} for an unknown name (refused later)."""
    from rl.algorithms import ALGORITHMS, algorithm  # imports torch, like the checks below

    layer: dict = {}
    for path, value in (algorithm(name).recipe if name in ALGORITHMS else {}).items():
        section, key = path.split(".")
        layer.setdefault(section, {})[key] = value
    return layer


POLICY_GRADIENT_OPTIONS = {  # key -> default: what only an algorithm with a clipped ratio over rollouts reads
    "algo.advantage_norm": "std",
    "algo.loss": "clip",
    "algo.ratio": "token",
    "algo.loss_agg": "seq_mean_token_mean",
    "rollout.dynamic_sampling": False,
}


def _check_policy_gradient_options(cfg: Config, clips_ratio: bool, origins: dict[str, str]) -> None:
    """The advantage and loss options of the GRCA family are refused, in one line, where they would do nothing."""
    for path, default in POLICY_GRADIENT_OPTIONS.items():
        section, key = path.split(".")
        if not clips_ratio and getattr(getattr(cfg, section), key) != default:
            raise _fail(
                path,
                f"is set, but algo.name={cfg.algo.name} has no clipped ratio over group advantages for it to change "
                "(grca, grpo, gdpo and dapo have)",
                origins,
            )
    if cfg.rollout.dynamic_sampling and cfg.rollout.mode == "one_step_off":
        raise _fail(
            "rollout.dynamic_sampling",
            "is true with rollout.mode=one_step_off: a refill's rollouts would wait for the update that one_step_off "
            "overlaps them with; use rollout.mode=sync",
            origins,
        )


def _check_correction(cfg: Config, clips_ratio: bool, origins: dict[str, str]) -> None:
    """rollout.correction needs a ratio to correct and the learner's recomputed log-probs; its bounds an interval."""
    low_high = cfg.rollout.correction_bounds
    if len(low_high) != 2 or low_high[0] >= low_high[1]:
        raise _fail("rollout.correction_bounds", f"expected [low, high] with low < high, got {low_high}", origins)
    mode = cfg.rollout.correction  # its null default (tis under one_step_off) is checked with one_step_off itself
    if mode in (None, "none"):
        return
    if not clips_ratio:
        raise _fail(
            "rollout.correction",
            f"is {mode}, but algo.name={cfg.algo.name} has no ratio over the rollout's log-probs to correct; set "
            "rollout.correction=none",
            origins,
        )
    if cfg.learner.recompute_old_logprobs is False:
        raise _fail(
            "learner.recompute_old_logprobs",
            f"is false, but rollout.correction={mode} compares the learner's recomputed log-probs with the "
            "rollout's; set it to true or null",
            origins,
        )


def _check_precision(cfg: Config, clips_ratio: bool, origins: dict[str, str]) -> None:
    """The precision contract of policies/roles.py: what would train wrong in silence is refused in one line
    (`clips_ratio`: the algorithm's loss is a ratio over the rollout's log-probs)."""
    dtype = cfg.policy.dtype
    if dtype == "float16":
        raise _fail(
            "policy.dtype",
            "is float16, whose small gradients underflow without loss scaling, which the learner does not do; use "
            "bfloat16",
            origins,
        )
    if dtype != "float32" and cfg.learner.strategy == "ddp" and cfg.policy.llm_mode == "full":
        raise _fail(
            "learner.strategy",
            f"is ddp with policy.dtype={dtype} and policy.llm_mode=full: DDP would train the LLM's weights in "
            f"{dtype}, where AdamW's small steps round away (a weight of 0.02 moves only in steps of 1.2e-4); set "
            f"learner.strategy=fsdp2 (float32 master weights, {dtype} compute, any number of workers) or "
            "policy.dtype=float32",
            origins,
        )
    reasons = recompute_reasons(cfg)
    if cfg.learner.recompute_old_logprobs is False and clips_ratio and reasons:
        raise _fail(
            "learner.recompute_old_logprobs",
            f"is false, but the rollout's log-probs cannot be the ratio's denominator here: {'; '.join(reasons)}; "
            "set it to true or null",
            origins,
        )


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
            value = getattr(part, item.name)
            value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value  # a nested section
            value = json.dumps(value, separators=(",", ":"))  # one column; also valid YAML
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
        print(
            f"usage: {Path(sys.argv[0]).name} [--config PATH] [section.key=value ...]\n"
            f"Values below: {config_path}{' + ' + ' '.join(overrides) if overrides else ''}. "
            "An override's value is YAML: algo.routed_fields=[bbox3d,kpts3d], reward.url=null."
        )
        print(describe(cfg))
        sys.exit(0)
    return cfg
