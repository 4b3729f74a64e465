"""`pointrl import` on tiny real files in each dataset's layout (meshes built with trimesh, written as the datasets ship
them), run as an operator runs it: the folder the store reads, ground truth the rewards accept, a kill and a rerun,
refusals; and `pointrl eval`'s ground-truth ceiling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from data3d import reward_sample, target_text
from data3d.primitives import sample_surface
from data3d.settings import DataSettings, dataset_settings, save_settings
from data3d.store import BenchmarkDataset, read_meta
from rewards import score_batch
from rl.cli.main import main

# 1000 bins: the ground truth's box at IoU >= 0.99 is then a property of the import, not of a coarse quantization
# (at the default 64 bins a rounded box can lose a few hundredths against the true one)
SETTINGS = DataSettings(num_points=256, image_size=64, num_kpts=2, bins=1000)
SMALL = ["--num-points", "256", "--image-size", "64", "--num-kpts", "2", "--bins", "1000"]
SYNSETS = {"03001627": "chair", "04379243": "table", "02876657": "bottle"}
SHAPES = [
    lambda k: trimesh.creation.box((1.0, 0.4 + 0.02 * k, 0.6)),
    lambda k: trimesh.creation.icosphere(2, radius=0.5 + 0.01 * k),
    lambda k: trimesh.creation.cylinder(0.3, 1.0 + 0.02 * k),
]


def make_shapenet(root: Path, n: int, broken: bool = False) -> Path:
    """n models in ShapeNetCore v2's layout over three synsets; with `broken`, one more file that is not a mesh."""
    for k in range(n):
        synset = list(SYNSETS)[k % 3]
        folder = root / synset / f"model{k:03d}" / "models"
        folder.mkdir(parents=True)
        SHAPES[k % 3](k).export(folder / "model_normalized.obj")
    if broken:
        folder = root / "03001627" / "broken" / "models"
        folder.mkdir(parents=True)
        (folder / "model_normalized.obj").write_text("this is not an obj file\n")
    return root


def make_modelnet(root: Path, n: int) -> Path:
    """n files of modelnet40_normal_resampled: <class>/<class>_0001.txt, rows x,y,z,nx,ny,nz."""
    for k in range(n):
        cls = ["night_stand", "cup", "chair"][k % 3]
        mesh = SHAPES[k % 3](k)
        xyz, normals, _ = sample_surface(mesh.vertices, mesh.faces, 2000, np.random.default_rng(k))
        (root / cls).mkdir(parents=True, exist_ok=True)
        np.savetxt(root / cls / f"{cls}_{k + 1:04d}.txt", np.concatenate([xyz, normals], 1), fmt="%.6f", delimiter=",")
    return root


def make_objaverse(root: Path, n: int) -> Path:
    """PointLLM's layout: <object_id>_8192.npy clouds (xyz + rgb in [0, 255]) and one conversation JSON."""
    root.mkdir(parents=True)
    conversations = []
    for k in range(n):
        mesh = SHAPES[k % 3](k)
        xyz, _, _ = sample_surface(mesh.vertices, mesh.faces, 8192, np.random.default_rng(k))
        rgb = np.tile([30.0, 140.0, 220.0], (len(xyz), 1))
        np.save(root / f"obj{k}_8192.npy", np.concatenate([xyz, rgb], 1).astype(np.float32))
        turns = [{"from": "human", "value": "<point>\nWhat is this?"}, {"from": "gpt", "value": f"Shape {k}."}]
        conversations.append({"object_id": f"obj{k}", "conversations": turns})
    (root / "PointLLM_brief_description.json").write_text(json.dumps(conversations))
    return root


def pointrl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rl.cli", *args], capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def samples_of(out: Path) -> dict[str, list]:
    return {split: list(BenchmarkDataset(out, split)) for split in ("train", "test")}


def assert_ground_truth_scores(out: Path) -> None:
    """Each sample's serialized ground truth, through the reward code with the dataset's quantization."""
    quant = dataset_settings(read_meta(out)).quant()
    samples = [s for split in samples_of(out).values() for s in split]
    results = score_batch(
        [reward_sample(s, target_text(s, quant)) for s in samples], {"bins": quant.bins, "bounds3d": quant.bounds3d}
    )
    for sample, result in zip(samples, results):
        assert result["rewards"]["format"] == 1.0, (sample.uid, result["errors"])
        assert result["rewards"]["bbox3d"] >= 0.99, (sample.uid, result["rewards"])


def test_shapenet_import_is_a_dataset_the_store_and_the_rewards_take(tmp_path, capsys):
    root = make_shapenet(tmp_path / "shapenet", 12, broken=True)
    out = tmp_path / "out"
    main(["import", "--shapenet", str(root), "--out", str(out), "--test-fraction", "0.25", "--shard-size", "4", *SMALL])
    captured = capsys.readouterr()
    assert "13/13" in captured.err  # the progress, objects done of all
    assert "skipped 1 of 13 objects" in captured.err and "broken/models/model_normalized.obj" in captured.err
    assert "Traceback" not in captured.err
    meta = read_meta(out)
    assert meta["planned"] == {"train": 10, "test": 3}  # round(13 * 0.25) test, as pointrl synth splits
    assert dataset_settings(meta) == SETTINGS  # what pointrl eval and training's data.dir check
    splits = samples_of(out)
    uids = {split: [s.uid for s in samples] for split, samples in splits.items()}
    assert len(uids["train"]) + len(uids["test"]) == 12 and not set(uids["train"]) & set(uids["test"])
    assert "shapenet-03001627-broken" not in uids["train"] + uids["test"]
    assert all(uids[split] == sorted(uids[split]) for split in uids)  # each split in the listing's order
    categories = {s.targets.category for split in splits.values() for s in split}
    assert categories == set(SYNSETS.values())
    sample = splits["train"][0]
    assert sample.points.shape == (256, 6) and sample.image.shape == (64, 64, 3) and len(sample.targets.kpts3d) == 2
    assert_ground_truth_scores(out)


def test_modelnet40_and_objaverse_imports(tmp_path, capsys):
    modelnet = make_modelnet(tmp_path / "modelnet", 6)
    main(
        [
            "import",
            "--modelnet40",
            str(modelnet),
            "--out",
            str(tmp_path / "mn"),
            "--limit",
            "4",
            "--test-fraction",
            "0.5",
            *SMALL,
        ]
    )
    splits = samples_of(tmp_path / "mn")
    assert [len(splits["train"]), len(splits["test"])] == [2, 2]  # a random 4 of the 6 files, split in half
    assert {s.targets.category for split in splits.values() for s in split} <= {"night stand", "cup", "chair"}
    assert_ground_truth_scores(tmp_path / "mn")
    objaverse = make_objaverse(tmp_path / "objaverse", 5)
    main(["import", "--objaverse", str(objaverse), "--out", str(tmp_path / "ov"), "--test-fraction", "0.2", *SMALL])
    splits = samples_of(tmp_path / "ov")
    assert [len(splits["train"]), len(splits["test"])] == [4, 1]
    assert {s.targets.answers[0] for split in splits.values() for s in split} == {f"Shape {k}." for k in range(5)}
    assert splits["test"][0].instruction == "What is this?"
    assert_ground_truth_scores(tmp_path / "ov")
    assert "Traceback" not in capsys.readouterr().err


def test_a_killed_import_resumes_without_redoing_or_losing_work(tmp_path):
    root = make_shapenet(tmp_path / "shapenet", 48, broken=True)
    args = ["import", "--shapenet", str(root), "--test-fraction", "0.25", "--shard-size", "2", "--seed", "5"]
    whole = pointrl(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "resumed"
    process = subprocess.Popen(
        [sys.executable, "-m", "rl.cli", *args, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:  # killed once a few shards are finished, with most of the objects still to read
        deadline = time.monotonic() + 60
        while (
            not (out / "meta.json").is_file()
            or sum(entry["count"] for entry in read_meta(out, partial_ok=True)["splits"].values()) < 6
        ):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    meta = read_meta(out, partial_ok=True)
    assert meta["complete"] is False
    done = sum(entry["count"] for entry in meta["splits"].values())
    assert 6 <= done < 47
    finished = {  # every file of the finished shards, by inode and mtime: a rerun that rewrote one would change them
        p: (p.stat().st_ino, p.stat().st_mtime_ns)
        for split, entry in meta["splits"].items()
        for shard in entry["shards"]
        for p in (out / split / shard["name"]).iterdir()
    }
    rerun = pointrl(*args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    resumed_after = int(rerun.stdout.split("resumed after ")[1].split()[0])
    assert resumed_after >= done  # objects: the written samples and any unreadable one among them
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert tree(out) == tree(tmp_path / "whole")  # nothing lost, nothing twice: the bytes of the uninterrupted run
    assert "skipped 1 of 49 objects" in rerun.stderr + whole.stderr
    again = pointrl(*args, "--out", str(out))
    assert again.returncode == 0 and "already complete" in again.stdout and tree(out) == tree(tmp_path / "whole")


def test_other_arguments_into_the_same_folder_are_refused_in_one_line(tmp_path, capsys):
    root = make_shapenet(tmp_path / "shapenet", 3)
    out = tmp_path / "out"
    main(["import", "--shapenet", str(root), "--out", str(out), *SMALL])
    before, _ = tree(out), capsys.readouterr()
    for extra, phrase in [(["--seed", "1"], "seed 0 vs 1"), (["--limit", "2"], "limit None vs 2")]:
        with pytest.raises(SystemExit) as info:
            main(["import", "--shapenet", str(root), "--out", str(out), *SMALL, *extra])
        err = capsys.readouterr().err
        assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("pointrl import: error:") and "other arguments" in err and phrase in err
    (tmp_path / "shapenet" / "03001627" / "new" / "models").mkdir(parents=True)
    SHAPES[0](9).export(tmp_path / "shapenet" / "03001627" / "new" / "models" / "model_normalized.obj")
    with pytest.raises(SystemExit):  # the same arguments, but the root has changed since
        main(["import", "--shapenet", str(root), "--out", str(out), *SMALL])
    assert "listed 3 vs 4" in capsys.readouterr().err and tree(out) == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["import", "--shapenet", str(root), "--out", str(tmp_path / "other"), *SMALL])
    assert "not empty and holds no pointrl dataset" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make, args, phrase",
    [
        (None, ["--shapenet", "{tmp}/nowhere"], "nowhere: no such directory"),
        ("empty", ["--shapenet", "{tmp}/empty"], "no ShapeNetCore v2 models"),
        ("empty", ["--modelnet40", "{tmp}/empty"], "no ModelNet40 files"),
        ("empty", ["--objaverse", "{tmp}/empty"], "--conversations"),
        ("empty", ["--modelnet40", "{tmp}/empty", "--synsets", "chair"], "--synsets applies to --shapenet only"),
        ("shapenet", ["--shapenet", "{tmp}/shapenet", "--synsets", "spaceship"], "unknown synset 'spaceship'"),
        ("shapenet", ["--shapenet", "{tmp}/shapenet", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys, make, args, phrase):
    if make == "empty":
        (tmp_path / "empty").mkdir()
    elif make == "shapenet":
        make_shapenet(tmp_path / "shapenet", 1)
    with pytest.raises(SystemExit) as info:  # in process: any other exception would fail the test with its traceback
        main(["import", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("pointrl import: error:") and phrase in err
    assert not (tmp_path / "out").exists()


def test_a_root_of_unreadable_files_is_an_error_not_an_empty_dataset(tmp_path, capsys):
    (tmp_path / "cup").mkdir()
    (tmp_path / "cup" / "cup_0001.txt").write_text("1,2,3,a,b,c\n")
    with pytest.raises(SystemExit) as info:
        main(["import", "--modelnet40", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "none of the 1 objects could be read" in str(info.value) and "cup_0001.txt" in str(info.value)
    assert "cup_0001.txt" in capsys.readouterr().err


def test_pointrl_eval_reports_the_ground_truth_ceiling(tmp_path, capsys):
    from policies.tiny import build_tiny_policy

    main(["synth", "--out", str(tmp_path / "synth"), "--n", "4", "--test-fraction", "0.5", *SMALL])
    main(
        [
            "import",
            "--shapenet",
            str(make_shapenet(tmp_path / "shapenet", 4)),
            "--out",
            str(tmp_path / "real"),
            "--test-fraction",
            "0.5",
            *SMALL,
        ]
    )
    build_tiny_policy(out_dir=tmp_path / "policy")
    save_settings(tmp_path / "policy", SETTINGS)
    capsys.readouterr()
    for data in ("synth", "real"):  # pointrl eval takes an imported folder as it takes a synthetic one
        out = tmp_path / f"eval_{data}.json"
        main(
            [
                "eval",
                "--policy",
                str(tmp_path / "policy"),
                "--data",
                str(tmp_path / data),
                "--out",
                str(out),
                "--no-reliance",
                "--max-new-tokens",
                "4",
                "--batch-size",
                "2",
            ]
        )
        ceiling = json.loads(out.read_text())["ceiling"]
        assert 0.0 < ceiling["rpc"] <= 1.0, ceiling
        assert ceiling["format_rate"] == 1.0 and ceiling["answer_acc"] == 1.0 and ceiling["iou3d"] >= 0.99
        printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ground-truth ceiling")]
        assert len(printed) == 1 and f"rpc {ceiling['rpc']:.3f}" in printed[0]


def test_shards_the_manifest_does_not_list_are_written_again(tmp_path, capsys):
    """A kill between a shard's rename and the manifest's update leaves a shard the manifest does not list, and a
    kill mid-shard a temporary folder: neither counts as finished work, and the rerun replaces both."""
    root = make_shapenet(tmp_path / "shapenet", 4)
    out = tmp_path / "out"
    args = ["import", "--shapenet", str(root), "--out", str(out), "--shard-size", "1", *SMALL]
    main(args)
    whole = tree(out)
    meta = json.loads((out / "meta.json").read_text())
    meta["complete"] = False  # as a kill after the fourth train shard's rename leaves it: two of them listed
    entry = meta["splits"]["train"]
    entry["shards"], entry["count"] = entry["shards"][:2], 2
    (out / "meta.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    (out / "train" / ".tmp-00004").mkdir()
    os.utime(out / "train" / "00002", ns=(0, 0))
    capsys.readouterr()
    main(args)
    assert "resumed after 2 objects" in capsys.readouterr().out
    assert tree(out) == whole and (out / "train" / "00002").stat().st_mtime_ns != 0
