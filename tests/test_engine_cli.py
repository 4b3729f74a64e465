"""`pointrl engine` refuses clouds it must not annotate in one line, before Ray or any model starts."""

import pytest

from data3d.benchmark import write_benchmark
from data3d.settings import DataSettings, save_settings
from policies.tiny import build_tiny_policy
from rl.cli.main import main

SETTINGS = DataSettings(num_points=256, image_size=32, num_kpts=1)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "policy"
    build_tiny_policy(out_dir=path)
    save_settings(path, SETTINGS)
    return path


def refusal(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["engine", *argv])
    message = str(exit_info.value.code)
    assert message.startswith("pointrl engine: error: ") and "\n" not in message
    assert "Traceback" not in capsys.readouterr().err
    return message


@pytest.mark.parametrize("seed, which", [(0, "training"), (1, "held-out")])
def test_clouds_of_the_runs_own_seeds_are_refused(policy, tmp_path, capsys, seed, which):
    clouds = tmp_path / "clouds"
    write_benchmark(clouds, 2, seed, test_fraction=0.0, settings=SETTINGS, progress=False)
    message = refusal(capsys, "--policy", str(policy), "--clouds", str(clouds), "--out", str(tmp_path / "out"))
    assert f"generated with seed {seed}" in message and which in message
    assert not (tmp_path / "out").exists()


def test_clouds_with_other_data_settings_are_refused(policy, tmp_path, capsys):
    clouds = tmp_path / "clouds"
    write_benchmark(clouds, 2, 7, test_fraction=0.0, settings=DataSettings(256, 32, 2), progress=False)
    message = refusal(capsys, "--policy", str(policy), "--clouds", str(clouds), "--out", str(tmp_path / "out"))
    assert "num_kpts 1 vs 2" in message


def test_a_missing_dataset_is_one_line(policy, tmp_path, capsys):
    message = refusal(capsys, "--policy", str(policy), "--clouds", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert str(tmp_path / "none") in message
