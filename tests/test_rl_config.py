"""rl/config.py and rl/config_loading.py: shipped YAML, overrides, extends, every config error, round trip, --help."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from rewards import REWARDS
from rl.config import (
    ALGORITHMS,
    CONFIG_DIR,
    FUSIONS,
    LLM_DTYPES,
    LLM_MODES,
    ROUTABLE_FIELDS,
    Config,
    ConfigError,
    scalar_reward_weights,
)
from rl.config_loading import config_from_dict, config_to_dict, load_config, parse_cli, save_config

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def all_keys(cfg: Config) -> list[tuple[str, str]]:
    return [(s.name, f.name) for s in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, s.name))]


def error_of(overrides: list[str], path: str | None = "grca.yaml") -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_yaml_loads_with_its_run_directory(path):
    cfg = load_config(path)
    assert cfg.run.dir == f"runs/{cfg.run.name}"
    if path.stem in ALGORITHMS:
        assert (cfg.algo.name, cfg.run.name) == (path.stem, path.stem)


def test_the_shipped_set_and_the_algorithm_of_each():
    assert {p.stem for p in SHIPPED} >= {*ALGORITHMS, "demo"}
    demo = load_config("demo.yaml")
    assert (demo.algo.name, demo.run.dir, demo.rollout.group_size) == ("grca", "runs/demo", 4)
    assert demo.policy.init is None and demo.sft.steps > 0  # the embedded default: warm-up, then GRCA
    assert demo.rollout.prompts_per_step % demo.learner.num_workers == 0  # shards evenly over learner ranks


def test_no_file_gives_the_dataclass_defaults():
    assert load_config() == Config()
    assert load_config("grca.yaml") == Config()  # grca.yaml names the defaults explicitly


def test_grpo_differs_from_grca_only_in_algorithm_and_run():
    grca, grpo = config_to_dict(load_config("grca.yaml")), config_to_dict(load_config("grpo.yaml"))
    differing = {(s, k) for s, k in all_keys(Config()) if grca[s][k] != grpo[s][k]}
    assert differing == {("algo", "name"), ("run", "name"), ("run", "dir")}


def test_overrides_of_each_kind():
    cfg = load_config(
        "grca.yaml",
        [
            "rollout.group_size=8",  # int
            "algo.clip_eps_high=0.28",  # float into float | None
            "learner.lr=1e-4",  # exponent without a dot (YAML 1.1 would read a string)
            "learner.weight_decay=1",  # an int widens to float
            "reward.url=http://127.0.0.1:8000",  # text with a colon
            "algo.routed_fields=[bbox3d,kpts3d]",  # list
            "reward.field_weights.bbox3d=0.3",  # one key of a dict, the others kept
            "run.name=my run",  # text with a space
            "data.use_images=false",  # bool
            "policy.init=null",  # None
            "run.ray_address=auto",
        ],
    )
    assert cfg.rollout.group_size == 8 and cfg.algo.clip_eps_high == 0.28
    assert cfg.learner.lr == 1e-4 and type(cfg.learner.weight_decay) is float and cfg.learner.weight_decay == 1.0
    assert cfg.reward.url == "http://127.0.0.1:8000" and cfg.algo.routed_fields == ["bbox3d", "kpts3d"]
    assert cfg.reward.field_weights == {**Config().reward.field_weights, "bbox3d": 0.3}
    assert (cfg.run.name, cfg.data.use_images, cfg.policy.init, cfg.run.ray_address) == ("my run", False, None, "auto")


def test_a_text_field_keeps_what_was_typed_and_a_later_override_wins():
    cfg = load_config("grca.yaml", ["run.name=42", "run.dir=runs/a: b", "reward.url=http://x", "reward.url=null"])
    assert (cfg.run.name, cfg.run.dir, cfg.reward.url) == ("42", "runs/a: b", None)


def test_unknown_keys_name_the_source_and_suggest_the_nearest():
    assert error_of(["learner.lrr=1e-4"]) == (
        "unknown key 'learner.lrr' in override 'learner.lrr=1e-4' (did you mean 'learner.lr'?)"
    )
    assert "unknown key 'lerner' in override 'lerner.lr=1' (did you mean 'learner'?)" in error_of(["lerner.lr=1"])
    message = error_of(["reward.field_weights.iou=1"])
    assert "unknown key 'reward.field_weights.iou'" in message and "bbox3d" in message


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("extends: %s\nrollout:\n  group_sise: 8\n" % (CONFIG_DIR / "grca.yaml"))
    message = error_of([], path)
    assert message == f"unknown key 'rollout.group_sise' in {path} (did you mean 'rollout.group_size'?)"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("learner.lr=fast", "learner.lr: expected float, got str 'fast' (from override 'learner.lr=fast')"),
        ("rollout.group_size=true", "rollout.group_size: expected int, got bool True"),
        ("rollout.group_size=4.0", "rollout.group_size: expected int, got float 4.0"),
        ("learner.lr=null", "learner.lr: expected float, got null"),
        ("learner.lr=.inf", "learner.lr: expected a finite number, got inf"),
        ("data.use_images=1", "data.use_images: expected bool, got int 1"),
        ("learner.betas=[0.9, x]", "learner.betas[1]: expected float, got str 'x'"),
        ("learner.betas=0.9", "learner.betas: expected list[float], got float 0.9"),
        ("reward.field_weights.format=high", "reward.field_weights.format: expected float, got str 'high'"),
        ("reward.field_weights=3", "reward.field_weights: expected dict[str, float], got int 3"),
        ("algo.clip_eps_high=wide", "algo.clip_eps_high: expected float | None, got str 'wide'"),
    ],
)
def test_wrong_types(override, expected):
    message = error_of([override])
    assert message.startswith(expected) and message.endswith(f"(from override {override!r})")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("rollout.backend=trt", "rollout.backend: expected one of hf, vllm, got 'trt'"),
        ("algo.name=ppo", "algo.name: expected one of grca, grpo, gdpo, dapo, spa, dpo, sft, got 'ppo'"),
        (
            "algo.routed_fields=[bbox3d, colour]",
            "algo.routed_fields[1]: expected one of answer, bbox2d, bbox3d, kpts2d, kpts3d, got 'colour'",
        ),
        ("spa.corruption=blur", "spa.corruption: expected one of mask, gaussian, drop, got 'blur'"),
        ("rollout.group_size=1", "rollout.group_size: expected >= 2, got 1"),
        ("run.steps=0", "run.steps: expected > 0, got 0"),
        ("learner.lr=-1e-5", "learner.lr: expected > 0, got -1e-05"),
        ("rollout.top_p=1.5", "rollout.top_p: expected in (0, 1], got 1.5"),
        ("spa.mask_ratio=1", "spa.mask_ratio: expected in [0, 1), got 1.0"),
        ("learner.betas=[0.9, 1.0]", "learner.betas[1]: expected in [0, 1), got 1.0"),
        ("reward.field_weights.format=-1", "reward.field_weights.format: expected >= 0, got -1.0"),
        ("algo.routed_field_weights.kpts3d=-1", "algo.routed_field_weights.kpts3d: expected >= 0, got -1.0"),
        ("reward.bins=1", "reward.bins: expected 0 or >= 2, got 1"),
        ("run.num_cpus=0", "run.num_cpus: expected > 0, got 0.0"),
        ("learner.betas=[0.9]", "learner.betas: expected two values (beta1, beta2), got [0.9]"),
        ("reward.mode=http", "reward.mode: is http, so reward.url must be the service's URL, but it is null"),
    ],
)
def test_bad_choices_and_ranges(override, expected):
    assert error_of([override]) == f"{expected} (from override {override!r})"


@pytest.mark.parametrize("algo", ["grca", "grpo", "dpo"])
def test_rl_refuses_top_p_below_one(algo):
    message = error_of([f"algo.name={algo}", "rollout.top_p=0.9"])
    assert message.startswith(f"rollout.top_p: is 0.9 with algo.name={algo}: top-p < 1 is not supported for RL")
    assert "truncated distribution" in message and message.endswith("(from override 'rollout.top_p=0.9')")
    assert load_config("sft.yaml", ["rollout.top_p=0.9"]).rollout.top_p == 0.9  # plain generation may truncate


def test_min_new_tokens_may_not_exceed_max_new_tokens():
    message = error_of(["rollout.max_new_tokens=8", "rollout.min_new_tokens=9"])
    assert message.startswith("rollout.min_new_tokens: is 9, more than rollout.max_new_tokens=8")
    assert load_config("grpo.yaml", ["rollout.min_new_tokens=320"]).rollout.min_new_tokens == 320


def test_lambda_has_one_home():
    message = error_of(["reward.field_weights.rpc=0.3"])
    assert message.startswith(
        "reward.field_weights.rpc in override 'reward.field_weights.rpc=0.3': set algo.rpc_weight"
    )
    cfg = load_config("grpo.yaml", ["algo.rpc_weight=0.4", "reward.field_weights.format=2"])
    assert "rpc" not in cfg.reward.field_weights
    assert scalar_reward_weights(cfg) == {**dict.fromkeys(REWARDS, 1.0), "format": 2.0, "rpc": 0.4}


def test_routed_fields_have_their_own_weights():
    cfg = load_config("grca.yaml", ["algo.routed_field_weights.bbox3d=2"])
    assert cfg.algo.routed_field_weights == {**dict.fromkeys(ROUTABLE_FIELDS, 1.0), "bbox3d": 2.0}
    assert cfg.reward.field_weights == Config().reward.field_weights


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("learner:\n  lr: fast\n")
    assert error_of([], path) == f"learner.lr: expected float, got str 'fast' (from {path})"
    path.write_text("learner: 3\n")
    assert error_of([], path) == f"learner: expected a mapping of keys, got int 3 (from {path})"
    path.write_text("learner: [lr\n")
    assert error_of([], path).startswith(f"{path}: not valid YAML")


@pytest.mark.parametrize("override", ["learner.lr", "learner=3", "=3", "learner..lr=3"])
def test_malformed_overrides(override):
    assert error_of([override]) == f"override {override!r}: expected section.key=value, e.g. rollout.group_size=8"


def test_missing_files():
    assert error_of([], "nope.yaml").startswith("no such config file: nope.yaml")


def test_extends_chain_merges_nested_mappings(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.yaml").write_text("learner:\n  lr: 1e-3\n  epochs: 3\nrun:\n  name: root\n")
    (tmp_path / "bases" / "middle.yaml").write_text(
        "extends: root.yaml\nlearner:\n  lr: 2e-3\nreward:\n  field_weights:\n    answer: 0.5\n"
    )
    (tmp_path / "leaf.yaml").write_text("extends: bases/middle.yaml\nrollout:\n  group_size: 6\n")
    cfg = load_config(tmp_path / "leaf.yaml", ["reward.field_weights.format=2"])
    assert (cfg.learner.lr, cfg.learner.epochs, cfg.run.name, cfg.rollout.group_size) == (2e-3, 3, "root", 6)
    assert cfg.reward.field_weights == {**Config().reward.field_weights, "answer": 0.5, "format": 2.0}
    assert cfg.learner.betas == Config().learner.betas  # untouched keys of a merged section keep their defaults


def test_extends_cycles_and_missing_bases_fail(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    assert "extends itself" in error_of([], tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: gone.yaml\n")
    expected = f"no such config file: {tmp_path / 'gone.yaml'} (extended by {(tmp_path / 'c.yaml').resolve()})"
    assert error_of([], tmp_path / "c.yaml") == expected


def test_save_then_load_gives_an_equal_config(tmp_path):
    overrides = [
        "learner.lr=3e-6",
        "algo.clip_eps_high=0.28",
        "run.name=a: b",
        "reward.url=http://h",
        "data.dir=/d",
        "algo.routed_fields=[kpts3d]",
        "reward.field_weights.kpts3d=0.333",
        "rollout.temperature=0.7",
        "run.seed=7",
        "checkpoint.resume=false",
    ]
    cfg = load_config("demo.yaml", overrides)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == cfg and config_to_dict(again) == config_to_dict(cfg)


def test_config_from_dict_round_trips_and_validates():
    cfg = load_config("spa.yaml", ["spa.mask_ratio=0.25", "learner.betas=[0.8, 0.9]"])
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_from_dict({"learner": {"lr": 2}}).learner.lr == 2.0
    with pytest.raises(ConfigError, match=r"^learner.lr: expected float, got str 'x' \(from the given dict\)$"):
        config_from_dict({"learner": {"lr": "x"}})


def test_parse_cli_reads_config_and_overrides():
    assert parse_cli([], "grca.yaml") == load_config("grca.yaml")
    assert parse_cli(["--config", "demo.yaml", "rollout.group_size=6"], "grca.yaml").rollout.group_size == 6
    assert parse_cli(["--config=spa.yaml"], "grca.yaml").algo.name == "spa"


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["learner.lrr=1"], "did you mean 'learner.lr'?"),
        (["--verbose"], "unknown option '--verbose'"),
        (["--config"], "--config: expected a path"),
    ],
)
def test_parse_cli_exits_2_with_the_problem(argv, expected, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_cli(argv, "grca.yaml")
    assert caught.value.code == 2 and expected in capsys.readouterr().err


def test_help_lists_every_key_with_type_value_and_doc(capsys):
    with pytest.raises(SystemExit) as caught:
        parse_cli(["--help", "rollout.group_size=6"], "demo.yaml")
    assert caught.value.code == 0
    listing, section = set(), None
    for line in capsys.readouterr().out.splitlines():
        if header := re.match(r"^(\w+):  # ", line):
            section = header.group(1)
        elif row := re.match(r"^  (\w+) +(\S.*?) {2,}(\S+) +(\S.*)$", line):
            listing.add((section, row.group(1)))
            if (section, row.group(1)) == ("rollout", "group_size"):
                assert (row.group(2), row.group(3), row.group(4)) == ("int", "6", "G: sampled outputs per prompt; >= 2")
            if (section, row.group(1)) == ("rollout", "backend"):
                assert row.group(4).endswith("one of hf, vllm")
    assert listing == set(all_keys(Config()))


def test_enums_agree_with_the_policy():
    # read from the source: importing policies costs seconds of torch and transformers start-up
    source = ast.parse((Path(__file__).parents[1] / "policies" / "inputs.py").read_text())
    assigned = {name.id: node.value for node in source.body if isinstance(node, ast.Assign) for name in node.targets}
    assert LLM_MODES == ast.literal_eval(assigned["LLM_MODES"])
    assert FUSIONS == ast.literal_eval(assigned["FUSIONS"])
    assert LLM_DTYPES == tuple(ast.literal_eval(key) for key in assigned["LLM_DTYPES"].keys)


@pytest.mark.parametrize("cpus, threads", [(0.25, 1), (0.5, 1), (1.0, 1), (2.0, 2), (3.5, 3)])
def test_a_rollout_worker_runs_torch_on_the_whole_cpus_ray_reserved_for_it(cpus, threads):
    from rl.runtime.controller import rollout_threads

    assert rollout_threads(cpus) == threads
