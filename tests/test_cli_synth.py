"""`pointrl synth` as an operator runs it: bad arguments, an impossible size, a kill and a resume (real processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data3d.store import BenchmarkDataset, DatasetError, read_meta
from rl.cli.main import main

SMALL = ["--num-points", "32", "--image-size", "16", "--num-kpts", "2", "--shard-size", "4"]


def synth(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rl.cli", "synth", *args], capture_output=True, text=True, timeout=timeout
    )


def start_synth(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rl.cli", "synth", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_samples(root: Path, count: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (root / "meta.json").is_file():
            meta = read_meta(root, partial_ok=True)
            if sum(entry["count"] for entry in meta["splits"].values()) >= count:
                return
        time.sleep(0.01)
    raise TimeoutError(f"{root} did not reach {count} samples")


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--n", "0"], "--n"),
        (["--n", "-5"], "--n"),
        (["--test-fraction", "1.5"], "--test-fraction"),
        (["--test-fraction", "-0.1"], "--test-fraction"),
        (["--num-points", "0"], "--num-points"),
        (["--image-size", "-1"], "--image-size"),
        (["--bins", "1"], "--bins"),
        (["--workers", "0"], "--workers"),
        (["--seed", "-1"], "--seed"),
        (["--relevance", "2"], "--relevance"),
        (["--shard-size", "0"], "--shard-size"),
        (["--resume", "--overwrite"], "--resume"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path, capsys, args, phrase):
    with pytest.raises(SystemExit) as info:  # in process: any other exception would fail the test with its traceback
        main(["synth", "--out", str(tmp_path / "data"), *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("pointrl synth: error:") and phrase in err
    assert not (tmp_path / "data").exists()


def test_out_pointing_at_a_file_or_a_full_directory_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    result = synth("--out", str(tmp_path / "file"), "--n", "2")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "is a file" in result.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    result = synth("--out", str(tmp_path / "full"), "--n", "2")
    assert result.returncode == 2 and "not empty" in result.stderr and "Traceback" not in result.stderr
    result = synth("--out", str(tmp_path / "nothing"), "--n", "2", "--resume")
    assert result.returncode == 2 and "nothing to resume" in result.stderr


def test_an_enormous_run_warns_up_front_and_a_kill_leaves_a_partial_dataset(tmp_path):
    out = tmp_path / "huge"
    process = start_synth("--out", str(out), "--n", "1000000000000", *SMALL)
    try:
        wait_for_samples(out, 8, process)
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
    warning = stderr.splitlines()[0]
    assert warning.startswith("pointrl synth: warning:") and "1000000000000 samples" in warning
    assert "years" in warning and "B of disk" in warning  # the estimates of time and disk, before any shard
    with pytest.raises(DatasetError) as info:
        BenchmarkDataset(out, "train")
    assert "partial dataset" in str(info.value) and "of 1000000000000 samples" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_killed_run_resumes_to_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    args = ["--n", "300", "--seed", "3", "--test-fraction", "0.25", *SMALL]  # long enough to be killed midway
    assert synth("--out", str(tmp_path / "whole"), *args).returncode == 0
    process = start_synth("--out", str(tmp_path / "resumed"), *args)
    try:
        wait_for_samples(tmp_path / "resumed", 12, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    assert read_meta(tmp_path / "resumed", partial_ok=True)["complete"] is False
    changed = synth("--out", str(tmp_path / "resumed"), *args, "--seed", "4", "--resume")
    assert changed.returncode == 2 and "seed" in changed.stderr and "Traceback" not in changed.stderr
    result = synth("--out", str(tmp_path / "resumed"), *args, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resum" in result.stdout
    assert tree(tmp_path / "resumed") == tree(tmp_path / "whole")
    again = synth("--out", str(tmp_path / "resumed"), *args, "--resume")
    assert again.returncode == 0 and "already complete" in again.stdout
    assert json.loads((tmp_path / "resumed" / "meta.json").read_text())["complete"] is True
