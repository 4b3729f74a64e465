"""The RL loop on a real local Ray cluster: rollout workers, the Serve reward deployment, the Ray Train learner,
weight sync, checkpoints and resume, and each algorithm end to end on the tiny policy."""

import dataclasses
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data3d.settings import DataSettings
from policies import PointVLM
from rl.config_loading import load_config
from rl.runtime.driver import main, run_stage

# two training prompts with one keypoint each (targets of ~115 tokens) keep every stage to seconds on 2 CPUs
SMALL = [
    "data.num_points=256",
    "data.image_size=32",
    "data.num_kpts=1",
    "data.train_size=2",
    "data.eval_size=2",
    "rollout.num_workers=2",
    "rollout.cpus_per_worker=0.25",
    "rollout.group_size=4",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=128",
    "learner.cpus_per_worker=0.5",
    "learner.micro_batch_size=4",
    "learner.lr=1e-3",
    "eval.max_new_tokens=128",
    "checkpoint.every=2",
    "policy.train_point_encoder=true",
]


@pytest.fixture(scope="module")
def warm_policy(cluster, init_policy, tmp_path_factory):
    """SFT until the tiny policy writes its two training targets: sampled groups then differ in reward."""
    run_dir = tmp_path_factory.mktemp("warm") / "sft"
    cfg = load_config(
        "sft.yaml", [*SMALL, f"run.dir={run_dir}", "run.steps=150", "learner.lr=3e-3", "checkpoint.every=150"]
    )
    final = run_stage(cfg, init_policy, run_dir)
    losses = [row["loss/total"] for row in metrics(run_dir)]
    assert losses[-1] < losses[0] / 10, losses[::25]  # SFT learns: the NLL falls by 10x
    return final


def config(tmp_path, name, *extra):
    return load_config(f"{name}.yaml", [*SMALL, f"run.dir={tmp_path / name}", *extra])


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def trainable_close(a: PointVLM, b: PointVLM) -> bool:
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    return all(bool((sa[k] - sb[k]).abs().max() < 1e-7) for k in sa)


def test_grca_steps_sync_versions_checkpoint_and_a_resume_ends_bit_for_bit_where_one_never_stopped(
    cluster, warm_policy, tmp_path
):
    options = ("eval.every=3", "learner.recompute_old_logprobs=true")  # checkpoint.every=2
    whole = run_stage(config(tmp_path, "grca", "run.steps=4", *options), warm_policy, tmp_path / "whole")
    rows = metrics(tmp_path / "whole")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["rollout/version"] for r in rows] == [0.0, 1.0, 2.0, 3.0]  # each rollout used the previous step's weights
    for row in rows:
        assert row["reward/missing"] == 0.0 and 0.0 <= row["reward/format"] <= 1.0
        assert row["mismatch/log_ratio_abs_max"] < 1e-4  # rollout log-probs == learner log-probs after each sync
        assert row["time/rollout"] > 0 and row["time/learn"] > 0 and row["time/sync"] >= 0
        assert 0 < row["time/rollout_engine"] < row["time/rollout"]  # the engine runs inside the Ray call
    assert any(row["advantage/frac_nonzero"] > 0 for row in rows)  # rewards differed within a group
    assert all(row["sync/mib"] > 0 and row["rollout/workers"] == 2.0 for row in rows)
    # the learner's start-up is reported with its first step, step 2's checkpoint with step 3
    assert [("time/learner_start" in r, "time/checkpoint" in r) for r in rows] == [(1, 0), (0, 0), (0, 1), (0, 0)]
    # GRCA §3.6: routed, no other reward reaches a routed field's tokens
    assert all(row.get(f"credit/other_fields_var/{f}", 0.0) == 0.0 for row in rows for f in ("bbox3d", "kpts3d"))
    assert not trainable_close(PointVLM.from_pretrained(warm_policy), PointVLM.from_pretrained(whole))
    assert "eval/iou3d" in rows[2] and "eval/iou3d" not in rows[1]  # held-out evaluation every 3 steps
    checkpoints = sorted(p for p in (tmp_path / "whole" / "learner").glob("checkpoint_*") if p.is_dir())
    assert checkpoints and (checkpoints[-1] / "policy" / "pointvlm.json").is_file()
    assert json.loads((checkpoints[-1] / "state.json").read_text())["step"] == 4

    # stopped after step 2 and resumed: rollouts, rewards and the learner restore every seeded stream
    run_stage(config(tmp_path, "grca", "run.steps=2", *options), warm_policy, tmp_path / "parts")
    resumed = run_stage(config(tmp_path, "grca", "run.steps=4", *options), warm_policy, tmp_path / "parts")
    parts = metrics(tmp_path / "parts")
    assert [r["step"] for r in parts] == [1, 2, 3, 4]  # continued from step 2, not from scratch
    assert parts[2]["time/learner_start"] > 0 and parts[2]["rollout/version"] == 2.0  # restored from step 2
    a, b = (
        PointVLM.from_pretrained(whole).trainable_state_dict(),
        PointVLM.from_pretrained(resumed).trainable_state_dict(),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit: data order, seeds, optimizer and schedule restored
    assert [r["loss/total"] for r in rows] == [r["loss/total"] for r in parts]


@pytest.mark.parametrize("lr, equal", [("1e-3", False), ("1e-12", True)])
def test_one_step_off_trains_on_rollouts_one_version_old(cluster, warm_policy, tmp_path, lr, equal):
    cfg = config(
        tmp_path,
        "grca",
        "run.steps=3",
        "rollout.mode=one_step_off",
        "rollout.max_staleness=1",
        f"learner.lr={lr}",
        "learner.recompute_old_logprobs=true",
    )
    run_stage(cfg, warm_policy, tmp_path / "grca")
    rows = metrics(tmp_path / "grca")
    # step 1 samples with version 0 as always; step 2's rollouts ran while the learner made version 1
    assert [r["rollout/version"] for r in rows] == [0.0, 0.0, 1.0]
    assert [r["learner/version_lag"] for r in rows] == [0.0, 1.0, 1.0]
    assert rows[0]["mismatch/weight_max"] == pytest.approx(1.0, abs=1e-4)  # lag 0: the policy that sampled
    lagged = [r["mismatch/weight_max"] for r in rows[1:]]
    if equal:  # a learning rate too small to move the weights: the older policy is the same policy
        assert lagged == pytest.approx([1.0, 1.0], abs=1e-4)
    else:
        assert max(lagged) > 1.001 and all(r["mismatch/truncated_fraction"] >= 0.0 for r in rows)


def test_broadcast_grpo_runs(cluster, warm_policy, tmp_path):
    # another quantization reaches prompts, rewards and the evaluation alike
    run_stage(
        config(tmp_path, "grpo", "run.steps=2", "reward.mode=local", "reward.bins=100", "eval.every=2"),
        warm_policy,
        tmp_path / "grpo",
    )
    rows = metrics(tmp_path / "grpo")
    assert len(rows) == 2 and all("advantage/std" in r for r in rows)
    assert all("credit/other_fields_var/bbox3d" in r for r in rows)  # GRCA §3.6, measured on broadcast too
    # the periodic evaluation at step 2 drew its first eval.pictures (default 2) objects into TensorBoard
    events = EventAccumulator(str(tmp_path / "grpo" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    pictures = [tag for tag in events.Tags()["images"] if tag.startswith("eval/picture/")]
    assert len(pictures) == 2 and all([e.step for e in events.Images(tag)] == [2] for tag in pictures)


@pytest.mark.parametrize(
    "algo, options",
    [
        ("gdpo", ["algo.advantage_norm=none", "algo.loss=cispo"]),
        ("dapo", ["algo.ratio=sequence", "rollout.max_refills=1"]),
    ],
)
def test_gdpo_and_dapo_run_two_steps(cluster, warm_policy, tmp_path, algo, options):
    run_stage(config(tmp_path, algo, "run.steps=2", "reward.mode=local", *options), warm_policy, tmp_path / algo)
    rows = metrics(tmp_path / algo)
    assert [r["step"] for r in rows] == [1, 2] and all("advantage/std" in r for r in rows)
    # DAPO's recipe turned dynamic sampling on: the controller drew again for any group that scored alike
    assert all(("sampling/draws" in r) == (algo == "dapo") for r in rows)


@pytest.mark.parametrize("algo, key", [("spa", "loss/preference"), ("dpo", "dpo/pairs"), ("sft", "loss/nll")])
def test_spa_dpo_sft_run_two_steps(cluster, warm_policy, tmp_path, algo, key):
    final = run_stage(config(tmp_path, algo, "run.steps=2", "reward.mode=local"), warm_policy, tmp_path / algo)
    rows = metrics(tmp_path / algo)
    assert [r["step"] for r in rows] == [1, 2] and all(key in r for r in rows)
    assert (final / "pointvlm.json").is_file()


def test_two_learner_ranks_train_in_ddp(cluster, init_policy, tmp_path):
    cfg = config(tmp_path, "sft", "run.steps=2", "learner.num_workers=2", "learner.cpus_per_worker=0.5")
    final = run_stage(cfg, init_policy, tmp_path / "sft2")
    rows = metrics(tmp_path / "sft2")
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss/total"] < rows[0]["loss/total"]
    assert not trainable_close(PointVLM.from_pretrained(init_policy), PointVLM.from_pretrained(final))


def test_dpo_from_a_pairs_file(cluster, warm_policy, tmp_path):
    from data3d import generate_sample, target_text

    uids = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    lines = [json.dumps({"uid": s.uid, "chosen": target_text(s), "rejected": "no idea"}) for s in uids]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    run_stage(
        config(tmp_path, "dpo", "run.steps=2", f"dpo.pairs_file={tmp_path / 'pairs.jsonl'}"),
        warm_policy,
        tmp_path / "dpo",
    )
    rows = metrics(tmp_path / "dpo")
    assert len(rows) == 2 and all("loss/reward_margin" in r for r in rows)


def test_bad_config_fails_before_anything_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main("grca.yaml", [f"run.dir={tmp_path / 'bad'}", "learner.lrr=1"])
    assert exit_info.value.code == 2 and "did you mean 'learner.lr'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_pisa_engine_annotates_checks_retrains_and_continues(cluster, warm_policy, tmp_path):
    """`pointrl engine` end to end: two loops of both arms on clouds the warm policy never saw, then a rerun that
    redoes only the loop whose summary is gone."""
    from data3d import BenchmarkDataset
    from data3d.benchmark import write_benchmark
    from rl.pisa.loop import run_engine

    clouds = tmp_path / "clouds"
    write_benchmark(clouds, 2, 7, test_fraction=0.0, settings=DataSettings(256, 32, 1), progress=False)
    cfg = load_config(
        "demo.yaml",
        [
            *SMALL,
            *("engine.loops=2", "engine.num_clouds=2", "engine.steps=2", "engine.rl_steps=1"),
            *("sft.batch_size=2", "eval.batch_size=2", "reward.mode=local"),
        ],
    )
    out = tmp_path / "engine"
    report = run_engine(cfg, warm_policy, clouds, "train", out)

    assert set(report["arms"]) == {"pisa", "no_stage2"}
    for arm, loops in report["arms"].items():
        assert [s["loop"] for s in loops] == [1, 2]
        for s in loops:
            loop_dir = out / arm / f"loop{s['loop']}"
            annotations = [json.loads(line) for line in (loop_dir / "annotations.jsonl").read_text().splitlines()]
            assert [len(a["texts"]) for a in annotations] == [4, 4]  # G = engine.samples per cloud
            decided = sum(sum(counts.values()) for counts in s["decisions"].values())
            assert decided == 2 * (6 if arm == "pisa" else 1)  # one decision per field (the ablation: per cloud)
            if s["kept"]:  # retrained on the kept annotations beside as many original objects
                train = BenchmarkDataset(loop_dir / "data", "train")
                uids = [train[i].uid for i in range(len(train))]
                assert len(uids) == 2 * s["kept"] and sum(u.startswith("pisa-") for u in uids) == s["kept"]
                # SFT, then engine.rl_steps of GRCA from it on the same data
                assert s["policy"] == str((loop_dir / "train" / "rl" / "policy").resolve())
                assert (loop_dir / "train" / "policy" / "pointvlm.json").is_file()
            assert s["held_out"]["n"] == 2 and ("swap_gap_iou3d" in s["held_out"]) == (s["loop"] == 2)
        # a loop that kept nothing hands its starting policy, the previous loop's, to the next
        retrained = str((out / arm / "loop2" / "train" / "rl" / "policy").resolve())
        assert loops[1]["policy"] == (retrained if loops[1]["kept"] else loops[0]["policy"])
    # the warm policy writes whole JSON objects for some clouds: the ablation (no cross-check) retrains on them
    assert report["arms"]["no_stage2"][0]["kept"] >= 1
    assert "| baseline |" in (out / "engine_report.md").read_text()

    (out / "pisa" / "loop2" / "summary.json").unlink()
    finished = (out / "no_stage2" / "loop1" / "eval.json").stat().st_mtime_ns
    again = run_engine(cfg, warm_policy, clouds, "train", out)
    assert (out / "no_stage2" / "loop1" / "eval.json").stat().st_mtime_ns == finished  # finished loops stay
    assert (out / "pisa" / "loop2" / "summary.json").is_file()
    assert again["arms"]["no_stage2"] == report["arms"]["no_stage2"]
    other = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, steps=3))
    with pytest.raises(ValueError, match="other settings \\(config.engine.steps 2 vs 3\\)"):
        run_engine(other, warm_policy, clouds, "train", out)
