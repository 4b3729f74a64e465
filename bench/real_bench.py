"""Synthetic against real shapes (`make real-bench`): a benchmark of real meshes from registry packages, and a policy
evaluated on it beside the synthetic benchmark it was trained on, with each set's ground-truth ceiling.

    python bench/real_bench.py --policy runs/demo/policy [--out runs/real-bench] [--report DIR]

The meshes (`make real-bench` installs the packages): Debian's inventor-data (LGPL-2+: 97 Open Inventor models in
category folders, converted by Coin3D: python3-pivy), the real objects among assimp-testmodels' format tests (BSD-3:
a toy pig, a spider, an engine, a sphere with a hole; its glTF 1 milk truck is left out, as trimesh reads glTF 2
only) and the three in pyvista's wheel (airplane, ant, nut; MIT). They are staged by category under `<out>/meshes`
and imported with `pointrl import --meshes` at the policy's data settings; the synthetic set is `pointrl synth`
with the same settings and a seed the policy never saw. Both are evaluated with `pointrl eval` (greedy, the
reliance gaps; a policy without an image encoder on its clouds alone); `<report>/real_bench.json` and
`real_bench.md` hold the table, and `pointrl viz` draws the policy's answers on the first real test objects under
`<report>/pictures`. `--report` (default: `--out`) lets a second policy be evaluated on the same two sets (they are
built once). Nothing here trains.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

INVENTOR = Path("/usr/share/inventor/data/models")
ASSIMP = Path("/usr/share/assimp/models")
ASSIMP_OBJECTS = {  # the files that are objects, not format tests, by the category they are staged under
    "OBJ/WusonOBJ.obj": "toys",
    "OBJ/spider.obj": "animals",
    "glTF2/2CylinderEngine-glTF-Binary/2CylinderEngine.glb": "machines",
    "STL/sphereWithHole.stl": "simple",
}
PYVISTA_OBJECTS = {"airplane.ply": "vehicles", "ant.ply": "animals", "nut.ply": "machines"}
METRICS = ("iou2d", "iou3d", "kpa2d", "kpa3d", "rpc", "answer_acc", "parse_rate")


def pyvista_wheel(folder: Path) -> Path:
    """pyvista's wheel (downloaded, never installed: only its example meshes are wanted)."""
    import subprocess

    wheels = sorted(folder.glob("pyvista-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "pyvista==0.49.2", "-d", str(folder)],
            check=True,
        )
        wheels = sorted(folder.glob("pyvista-*.whl"))
    return wheels[-1]


def data_flags(settings) -> list[str]:
    """The `pointrl synth` / `pointrl import` flags that write samples at a policy's data settings."""
    return ["--num-points", str(settings.num_points), "--image-size", str(settings.image_size),
            "--num-kpts", str(settings.num_kpts), "--bins", str(settings.bins)]  # fmt: skip


def stage_meshes(stage: Path) -> dict[str, int]:
    """Copy every source's meshes under `stage/<category>/`; the count per source."""
    missing = [str(p) for p in (INVENTOR, ASSIMP) if not p.is_dir()]
    if missing:
        sys.exit(f"real_bench: {', '.join(missing)} missing: apt install inventor-data assimp-testmodels python3-pivy")
    counts = {"inventor-data": 0, "assimp-testmodels": 0, "pyvista": 0}
    for path in sorted(INVENTOR.rglob("*.iv")):
        relative = path.relative_to(INVENTOR)
        target = stage / "inventor" / relative if len(relative.parts) == 1 else stage / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
        counts["inventor-data"] += 1
    for name, category in ASSIMP_OBJECTS.items():
        source, target = ASSIMP / name, stage / category
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / source.name)  # the file alone: its folder holds other format tests
        counts["assimp-testmodels"] += 1
    with zipfile.ZipFile(pyvista_wheel(stage.parent)) as wheel:
        for name, category in PYVISTA_OBJECTS.items():
            (stage / category).mkdir(parents=True, exist_ok=True)
            (stage / category / name).write_bytes(wheel.read(f"pyvista/examples/{name}"))
            counts["pyvista"] += 1
    return counts


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="runs/demo/policy", help="the policy directory to evaluate")
    parser.add_argument("--out", default="runs/real-bench", help="the meshes and both benchmarks")
    parser.add_argument("--report", help="the evaluations, table and pictures (default: --out)")
    parser.add_argument("--synthetic", type=int, default=256, help="synthetic objects to compare with")
    parser.add_argument("--pictures", type=int, default=6, help="real test objects drawn with the policy's answers")
    parser.add_argument("--limit", type=int, help="evaluate the first N objects of each set (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="answers decoded at once (32 suits SmolLM2)")
    args = parser.parse_args(argv)
    from data3d.settings import load_settings
    from rl.cli.main import main as pointrl
    from rl.eval.evaluate import run_eval

    policy, out = Path(args.policy), Path(args.out)
    report_dir = Path(args.report or out)
    report_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings(policy)
    if settings is None:
        sys.exit(f"real_bench: {policy} records no data settings (data_settings.json): give a trained policy")
    flags = data_flags(settings)
    stage = out / "meshes"
    if not stage.is_dir():
        print(f"staged meshes: {stage_meshes(stage)}")
    if not (out / "real" / "meta.json").is_file():  # a policy with other data settings is refused by the eval
        pointrl(["import", "--meshes", str(stage), "--out", str(out / "real"), "--test-fraction", "0.5", *flags])
    if not (out / "synthetic" / "meta.json").is_file():
        pointrl(["synth", "--out", str(out / "synthetic"), "--n", str(2 * args.synthetic), "--test-fraction", "0.5",
                 "--seed", "7919", *flags])  # fmt: skip
    reports = {}
    for name in ("synthetic", "real"):
        for split in ("train", "test") if name == "real" else ("test",):  # nothing here trains on the real objects
            print(f"\n== {name} {split}")
            reports[f"{name} {split}"] = run_eval(
                str(policy), str(out / name), str(report_dir / f"eval_{name}_{split}.json"), split, args.limit,
                args.batch_size)  # fmt: skip
    rows = {
        key: {**{m: r.get(m) for m in METRICS}, "ceiling_rpc": r["ceiling"].get("rpc")} for key, r in reports.items()
    }
    (report_dir / "real_bench.json").write_text(json.dumps({"policy": str(policy), "rows": rows}, indent=1))
    lines = [f"# {policy} on synthetic and real shapes", "", "| set | " + " | ".join(METRICS) + " | RPC ceiling |"]
    lines.append("|---|" + "---|" * (len(METRICS) + 1))
    for key, row in rows.items():
        cells = ["-" if row[m] is None else f"{row[m]:.3f}" for m in (*METRICS, "ceiling_rpc")]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    (report_dir / "real_bench.md").write_text("\n".join(lines) + "\n")
    pointrl(["viz", "--policy", str(policy), "--data", str(out / "real"), "--n", str(args.pictures),
             "--out", str(report_dir / "pictures")])  # fmt: skip
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
