"""A newcomer's first `ray job submit`, pasted from the README after `make demo`: the venv activated, `ray start
--head`, the README's own `ray job submit` line, and a job that the Jobs API lists as SUCCEEDED. The venv running the
tests stands for the README's `.venv`, and it is taken off the PATH first, so that only the README's activation puts
it there. (Marked e2e in conftest.py: it starts a Ray head.)"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from data3d.settings import DataSettings, load_settings
from tests.test_infra_configs import readme_commands

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
JOB_TIMEOUT_S = 600


@dataclass
class Head:
    url: str  # the dashboard, where the Jobs API is
    token: str
    env: dict[str, str]
    preamble: list[list[str]]  # the README's lines before `ray start`: the venv activated, the auth mode exported


def as_run_here(words: list[str]) -> list[str]:
    """A README line as this test runs it: `.venv` is the venv running the tests."""
    return [str(VENV / w.removeprefix(".venv/")) if w.startswith(".venv/") else w for w in words]


def script(commands: list[list[str]]) -> str:
    return "set -e\n" + "\n".join(shlex.join(c) for c in commands)


def free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def get(head: Head, path: str):
    request = urllib.request.Request(head.url + path, headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def ours(temp_dir: str) -> list[psutil.Process]:
    """The processes of this head still running: their command lines name its temp dir, which is the test's own."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in process.info["cmdline"] or ()):
            found.append(process)
    return found


def stop(process: subprocess.Popen, temp_dir: str) -> list[str]:
    """Stops the head by its own pid, not with the README's `ray stop`, which stops every Ray process of the machine
    (other tests' clusters, a run in another checkout). Every process of the head gets SIGTERM at once, then SIGKILL
    after 5 s, as `ray stop --force` would: its raylet and GCS take about half a minute to drain on SIGTERM, which
    this test does not measure. Returns the command lines of any that outlived the head (then killed, by pid)."""

    def signal_all(how: str) -> None:
        for member in ours(temp_dir):
            try:
                getattr(member, how)()
            except psutil.NoSuchProcess:
                pass

    signal_all("terminate")
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass
    signal_all("kill")
    process.wait(10)
    time.sleep(2)  # the head's last processes exit after it
    left = ours(temp_dir)
    signal_all("kill")
    return [" ".join(p.info["cmdline"] or ())[:200] for p in left]


@pytest.fixture
def head(tmp_path):
    """The README's local head, started as its lines say, on free ports, in a temp dir of its own (so that
    `ray_current_cluster` goes there, not to /tmp/ray where a plain `ray.init()` would find it) and with 2 CPUs, the
    head the README sizes its job for; stopped whatever the test did."""
    commands = readme_commands()
    start = commands.index(["ray", "start", "--head"])
    gcs, dashboard, client, agent = free_ports(4)
    # short: Ray's Unix socket paths (under the temp dir) must stay within 107 characters
    temp_dir = tempfile.mkdtemp(prefix="rayfj", dir="/tmp")
    flags = [
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        f"--temp-dir={temp_dir}",
        "--num-cpus=2",
        "--disable-usage-stats",
        "--block",
    ]
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV / "bin"]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VIRTUAL_ENV")}
    env |= {"PATH": os.pathsep.join(path), "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # no ~/.ray/auth_token needed
    preamble = [as_run_here(c) for c in commands[:start]]
    log = open(tmp_path / "head.log", "w")  # noqa: SIM115 - the head writes it until teardown
    process = subprocess.Popen(
        ["bash", "-c", script([*preamble, ["exec", *commands[start], *flags]])],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    left = []
    try:
        up = Head(f"http://127.0.0.1:{dashboard}", env["RAY_AUTH_TOKEN"], env, preamble)
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "head.log").read_text()[-3000:]
            try:
                get(up, "/api/jobs/")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                assert time.monotonic() < deadline, f"the head's Jobs API did not answer within 120 s: {error}"
                time.sleep(1)
        yield up
    finally:
        left = stop(process, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not left, f"processes of the head outlived it: {left}"


def test_the_readmes_first_job_succeeds_on_a_head_started_as_it_says(head, tmp_path):
    submit = next(c for c in readme_commands() if c[:3] == ["ray", "job", "submit"])
    run_dir = tmp_path / "first-job"
    submit = [f"run.dir={run_dir}" if w.startswith("run.dir=") else w for w in submit]
    assert f"run.dir={run_dir}" in submit and not any("$" in w for w in submit)
    began = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", script([*head.preamble, submit])],
        cwd=ROOT,
        env=head.env | {"RAY_API_SERVER_ADDRESS": head.url},  # the head's dashboard; the README's is 8265
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    print(f"the job ran for {time.monotonic() - began:.0f} s")
    assert done.returncode == 0, output[-5000:]  # `ray job submit` exits 1 when the job fails
    job_id = re.search(r"Job '([^']+)' submitted successfully", output).group(1)
    assert get(head, f"/api/jobs/{job_id}")["status"] == "SUCCEEDED"
    assert "ModuleNotFoundError" not in output and "placement error" not in output
    # main warmed up with SFT, trained, and evaluated both policies, where run.dir said
    for name in ("eval_sft.json", "eval_final.json"):
        report = json.loads((run_dir / name).read_text())
        assert {"iou2d", "iou3d", "kpa2d", "kpa3d", "rpc", "answer_acc", "parse_rate"} <= set(report)
        assert report["meta"]["samples"] == 8
    # both policies record the data they read, for `pointrl eval`; the warm-up trained the cloud-alignment head
    assert load_settings(run_dir / "sft" / "policy") == load_settings(run_dir / "policy") == DataSettings()
    sft_log = [json.loads(line) for line in (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert len(sft_log) == 20 and all(row["loss/align"] > 0 for row in sft_log)
