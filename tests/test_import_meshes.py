"""`pointrl import --meshes`: any folder of meshes (each format trimesh reads, at any depth) labelled by its folders or
not at all, rendered and annotated as the other imports are, bad files skipped with a line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import trimesh

from data3d.store import read_meta
from rl.cli.main import main
from tests.test_import import SMALL, assert_ground_truth_scores, samples_of


def make_meshes(root: Path) -> Path:
    """Labelled folders (one of them nested deeper), a file directly in the root, and a file that is not a mesh."""
    shapes = {
        "vehicles/car.obj": trimesh.creation.box((1.6, 0.5, 0.7)),
        "vehicles/trucks/truck.ply": trimesh.creation.box((2.0, 0.9, 0.8)),
        "household/vase.stl": trimesh.creation.cylinder(0.3, 1.0),
        "household/ball.glb": trimesh.creation.icosphere(2, radius=0.5),
        "chess pieces/pawn.off": trimesh.creation.cone(0.3, 0.8),
        "loose.obj": trimesh.creation.box((0.3, 1.2, 0.4)),
    }
    for name, mesh in shapes.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        mesh.export(root / name)
    (root / "household" / "broken.obj").write_text("v 0 0 0\nthis is not a mesh\n")
    (root / "README.txt").write_text("not a mesh suffix: not listed")
    return root


def test_a_folder_of_meshes_becomes_a_labelled_benchmark(tmp_path, capsys):
    root, out = make_meshes(tmp_path / "meshes"), tmp_path / "out"
    main(["import", "--meshes", str(root), "--out", str(out), "--test-fraction", "0.3", *SMALL])
    captured = capsys.readouterr()
    assert "skipped 1 of 7 objects" in captured.err and "household/broken.obj" in captured.err
    assert "Traceback" not in captured.err and "wrote" in captured.out
    assert read_meta(out)["config"]["labels"] == "folders"
    samples = {s.uid: s for split in samples_of(out).values() for s in split}
    categories = {uid: s.targets.category for uid, s in samples.items()}
    assert categories == {
        "mesh-vehicles_car": "vehicles",
        "mesh-vehicles_trucks_truck": "vehicles",
        "mesh-household_vase": "household",
        "mesh-household_ball": "household",
        "mesh-chess_pieces_pawn": "chess pieces",
        "mesh-loose": "object",
    }
    assert samples["mesh-vehicles_car"].question_type == "category"
    assert "vehicles" in samples["mesh-vehicles_car"].instruction
    loose = samples["mesh-loose"]  # unlabelled: a question its own box answers (it is tallest along y)
    assert loose.question_type == "axis" and "y" in loose.targets.answers
    assert_ground_truth_scores(out)


def test_without_labels_every_object_is_asked_about_its_shape(tmp_path, capsys):
    root, out = make_meshes(tmp_path / "meshes"), tmp_path / "out"
    main(["import", "--meshes", str(root), "--labels", "none", "--out", str(out), *SMALL])
    samples = [s for split in samples_of(out).values() for s in split]
    assert len(samples) == 6 and {s.targets.category for s in samples} == {"object"}
    assert {s.question_type for s in samples} <= {"axis", "taller"}


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--meshes", "{tmp}/nope"], "--meshes {tmp}/nope: no such directory"),
        (["--meshes", "{tmp}"], "no mesh files; expected <category folder>/<name>"),
        (["--shapenet", "{tmp}", "--labels", "none"], "--labels applies to --meshes only"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, phrase):
    with pytest.raises(SystemExit) as exit_info:
        main(["import", *[a.format(tmp=tmp_path) for a in args], "--out", str(tmp_path / "out")])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert phrase.format(tmp=tmp_path) in err and "Traceback" not in err


def pivy_available() -> bool:
    import subprocess

    from data3d.inventor import SYSTEM_PYTHON

    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import pivy"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not pivy_available(), reason="Open Inventor needs python3-pivy (.ci/run installs it)")
def test_open_inventor_files_are_converted_by_coin(tmp_path, capsys):
    root, out = tmp_path / "inventor", tmp_path / "out"
    (root / "toys").mkdir(parents=True)
    (root / "toys" / "block.iv").write_text(
        "#Inventor V2.1 ascii\nSeparator { Translation { translation 1 0 0 } Cube { width 2 height 1 depth 0.5 } }\n"
    )
    (root / "toys" / "ring.iv").write_text("#Inventor V2.1 ascii\nSeparator { Cylinder { radius 0.5 height 0.2 } }\n")
    (root / "toys" / "junk.iv").write_text("not inventor at all")
    main(["import", "--meshes", str(root), "--out", str(out), "--test-fraction", "0", *SMALL])
    err = capsys.readouterr().err
    assert "skipped 1 of 3 objects" in err and "toys/junk.iv: not an Open Inventor scene" in err
    samples = samples_of(out)["train"]
    assert [s.uid for s in samples] == ["mesh-toys_block", "mesh-toys_ring"]
    assert all(s.targets.category == "toys" for s in samples)
    assert_ground_truth_scores(out)
