"""The footprint of the command line and of the plain-HTTP reward service, measured in one run:

- the idle resident memory (VmRSS) of a `python -c "import serve.app"` process (the service's own modules) beside a
  `pointrl serve-rewards` process on a free 127.0.0.1 port once `/health` answers, and their ratio against the goal
  of 1.5x; also the service's RSS after it scored the example request;
- `pointrl --help`: its wall time, peak RSS and whether torch, Ray, transformers or matplotlib were imported.

The processes run this checkout's code (PYTHONPATH is the repository root), `pointrl` through the installed entry
point beside this interpreter when there is one, else `python -m rl.cli` (the same `rl.cli:main`). Linux: it reads
/proc/<pid>/status. Prints medians over --repeats rounds, the arms interleaved; no pass/fail.

  python bench/serve_memory_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import httpx

from serve.server import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5
HEAVY = ("torch", "ray", "transformers", "matplotlib")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def pointrl_command() -> list[str]:
    script = Path(sys.executable).parent / "pointrl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rl.cli"]


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def settled_rss(pid: int, wait_s: float = 1.0) -> float:
    """RSS once the process has been idle for `wait_s` (lazy imports and first allocations done)."""
    time.sleep(wait_s)
    return rss_mib(pid)


def import_serve_app_rss() -> float:
    """`python -c "import serve.app"`, held open on stdin until its RSS is read."""
    script = "import sys; import serve.app; print('ready', flush=True); sys.stdin.read()"
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        return settled_rss(process.pid)
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def serve_rewards_rss(example: dict) -> tuple[float, float]:
    """(idle RSS once /health answers, RSS after scoring the example request) of `pointrl serve-rewards`."""
    port = free_port()
    command = [*pointrl_command(), "serve-rewards", "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"]
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process=process)
        idle = settled_rss(process.pid)
        assert httpx.post(f"{url}/v1/rewards", json=example, timeout=30).status_code == 200
        return idle, settled_rss(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def help_run() -> tuple[float, float, list[str]]:
    """(wall s, peak RSS MiB, heavy modules imported) of `pointrl --help`; the modules are reported by the same
    `rl.cli:main` run in `python -c` (the entry point cannot report them)."""
    start = time.perf_counter()
    process = subprocess.Popen([*pointrl_command(), "--help"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)  # reaped here for its rusage: its own peak RSS
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0, f"pointrl --help exited with {process.returncode}"
    script = (
        "import sys\nfrom rl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    return wall, usage.ru_maxrss / 1024, [m for m in done.stderr.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    example = json.loads(resources.files("serve").joinpath("example_request.json").read_text())
    print(f"pointrl: {' '.join(pointrl_command())} (this checkout: {ROOT})")
    app, idle, scored, walls, peaks, heavy = [], [], [], [], [], set()
    for round_ in range(args.repeats):
        app.append(import_serve_app_rss())
        service = serve_rewards_rss(example)
        idle.append(service[0])
        scored.append(service[1])
        wall, peak, imported = help_run()
        walls.append(wall)
        peaks.append(peak)
        heavy.update(imported)
        print(
            f"  round {round_ + 1}: import serve.app {app[-1]:.1f} MiB, serve-rewards idle {idle[-1]:.1f} MiB "
            f"(after a request {scored[-1]:.1f}), --help {wall:.2f} s {peak:.1f} MiB",
            flush=True,
        )
    base, service = statistics.median(app), statistics.median(idle)
    ratio = service / base
    print(f'python -c "import serve.app"            idle RSS {base:6.1f} MiB (median of {args.repeats})')
    print(
        f"pointrl serve-rewards (plain HTTP)      idle RSS {service:6.1f} MiB; {statistics.median(scored):.1f} after a request"
    )
    print(f"ratio {ratio:.2f}x against the goal of {GOAL}x: {'within' if ratio <= GOAL else 'OVER'} the goal")
    print(
        f"pointrl --help: {statistics.median(walls):.2f} s, peak RSS {statistics.median(peaks):.1f} MiB; "
        f"imports of {', '.join(HEAVY)}: {', '.join(sorted(heavy)) or 'none'}"
    )


if __name__ == "__main__":
    main()
