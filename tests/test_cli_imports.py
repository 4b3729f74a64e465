"""`pointrl --help`, every `pointrl <command> --help`, a usage error of every command and the plain-HTTP reward
service import none of torch, Ray, transformers or matplotlib: each case runs in a fresh interpreter, which reports
the heavy modules in its sys.modules as it exits (a behaviour test, not a timed one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "transformers", "matplotlib")
# The interpreter writes the heavy modules it imported to argv[1] when it exits, after `pointrl` (argv[2:]) ran.
POINTRL = f"""
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules))))
from rl.cli import main
sys.argv = ["pointrl", *sys.argv[2:]]
main()
"""


def commands() -> list[str]:
    (subparsers,) = (action for action in build_parser()._actions if action.choices and action.dest == "command")
    return list(subparsers.choices)


def python(tmp_path: Path, script: str, *argv: str) -> subprocess.CompletedProcess:
    """`python -c script argv` in a fresh interpreter that imports this checkout, in an empty directory."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", script, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


def pointrl(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `pointrl argv` in a fresh interpreter; (the finished process, the heavy modules it imported)."""
    report = tmp_path / "heavy.json"
    done = python(tmp_path, POINTRL, str(report), *argv)
    assert report.is_file(), done.stderr
    return done, json.loads(report.read_text())


def test_every_command_is_covered():
    assert {"serve-rewards", "score", "synth", "import", "init", "viz", "engine", "eval"} <= set(commands())


@pytest.mark.parametrize("argv", [["--help"]] + [[command, "--help"] for command in commands()], ids=" ".join)
def test_help_imports_no_heavy_module(tmp_path, argv):
    done, heavy = pointrl(tmp_path, *argv)
    assert done.returncode == 0 and done.stdout.startswith("usage: pointrl"), done.stderr
    assert heavy == []


@pytest.mark.parametrize("command", commands())
def test_a_bad_command_line_is_one_error_line_without_heavy_imports(tmp_path, command):
    done, heavy = pointrl(tmp_path, command, "--no-such-option")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(errors) == 1 and errors[0].startswith(f"pointrl {command}: error: "), done.stderr
    assert heavy == []


@pytest.mark.parametrize(
    "argv, says",
    [
        (["synth", "--out", "data", "--n", "0"], "--n must be at least 1"),
        (["import", "--modelnet40", "root", "--out", "data", "--limit", "0"], "--limit must be at least 1"),
        (["init", "--llm", "no-such-llm", "--out", "policy"], "--llm no-such-llm: no such directory"),
        (["viz", "--policy", "p", "--data", "d", "--out", "o", "--n", "0"], "--n and --max-new-tokens"),
        (["serve-rewards", "--max-samples", "0"], "max_samples must be positive"),
        (["serve-rewards", "--token", " "], "the bearer token is empty"),
        (["traces", "no-run"], "no-run: no traces/ here"),
        (["traces", "no-run", "--host", "0.0.0.0"], "--host 0.0.0.0 exposes the traces: give --token"),
        (["replay", "no-run", "--step", "1"], "no-run: no traces/ here"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else "",
)
def test_argument_checks_answer_in_one_line_before_any_heavy_import(tmp_path, argv, says):
    done, heavy = pointrl(tmp_path, *argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"pointrl {argv[0]}: error: ") and says in done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert heavy == []


SERVE = f"""
import json, sys
import uvicorn

served = {{}}
uvicorn.run = lambda app, **options: served.update(app=app, **options)  # built as for real, not listened on
entry = sys.argv[1]
if entry == "pointrl":
    from rl.cli import main
    main(["serve-rewards", "--port", "0"])
else:
    from serve.server import main
    main(["--port", "0"])
from fastapi.testclient import TestClient
from importlib import resources

body = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
response = TestClient(served["app"]).post("/v1/rewards", json=body)
print(json.dumps({{
    "app": type(served["app"]).__name__,
    "status": response.status_code,
    "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
}}))
"""


@pytest.mark.parametrize("entry", ["pointrl", "serve.server"])
def test_the_plain_http_service_imports_no_torch_or_ray(tmp_path, entry):
    """`pointrl serve-rewards` (and `python -m serve`) without --ray: the app is built and scores a request, and
    nothing of torch, Ray, transformers or matplotlib was imported on the way."""
    done = python(tmp_path, SERVE, entry)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"app": "FastAPI", "status": 200, "heavy": []}
