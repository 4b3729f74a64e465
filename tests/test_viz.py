"""`pointrl viz`: the geometry drawn is the answer's, dequantized as the reward code reads it, and the command writes a
picture per object for a real tiny policy on a real dataset directory."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data3d import generate_sample, target_text, write_benchmark
from data3d.settings import DataSettings, save_settings
from rewards import Quant
from rl.eval.viz import draw, predicted_geometry

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bins", [0, 64, 1000])
def test_the_targets_written_as_an_answer_come_back_as_the_targets(bins):
    sample = generate_sample(2, 0, num_points=256, image_size=64, num_kpts=4)
    quant = Quant(bins=bins)
    geometry = predicted_geometry(target_text(sample, quant), sample, quant)
    assert set(geometry) == {"bbox2d", "bbox3d", "kpts2d", "kpts3d"}
    lo3d, hi3d = np.asarray(quant.bounds3d)
    step3d = 0 if bins == 0 else (hi3d - lo3d).max() / (bins - 1)  # one bin's width, object units
    step2d = 0 if bins == 0 else max(sample.camera.width, sample.camera.height) / (bins - 1)  # pixels
    tol = 1e-3 if bins == 0 else 1e-6  # continuous answers are written with 3 decimals
    assert np.allclose(geometry["bbox3d"], sample.targets.bbox3d, atol=step3d / 2 + tol)
    assert np.allclose(geometry["kpts3d"], sample.targets.kpts3d, atol=step3d / 2 + tol)
    assert np.allclose(geometry["bbox2d"], sample.targets.bbox2d, atol=step2d / 2 + tol)
    assert np.allclose(geometry["kpts2d"], sample.targets.kpts2d, atol=step2d / 2 + tol)


def test_a_broken_answer_draws_only_what_parsed(tmp_path):
    sample = generate_sample(2, 1, num_points=256, image_size=64)
    assert predicted_geometry("no json here", sample, Quant()) == {}
    half = '{"answer": "chair", "bbox2d": [1, 2, 30, 40], "bbox3d": [1, 2]}'
    assert set(predicted_geometry(half, sample, Quant())) == {"bbox2d"}  # a 2-number box3d is not drawn
    draw(sample, half, Quant(), {"bbox2d": 0.5}, tmp_path / "half.png")
    assert (tmp_path / "half.png").read_bytes()[:8] == PNG


def test_pointrl_viz_writes_a_picture_per_object(tmp_path, capsys):
    from policies.tiny import build_tiny_policy
    from rl.cli.main import main

    settings = DataSettings(num_points=256, image_size=32, num_kpts=2, bins=50)
    write_benchmark(tmp_path / "data", 6, seed=1, test_fraction=0.5, settings=settings, progress=False)
    build_tiny_policy(out_dir=tmp_path / "policy")
    save_settings(tmp_path / "policy", settings)
    out = tmp_path / "pictures"
    main(
        ["viz", "--policy", str(tmp_path / "policy"), "--data", str(tmp_path / "data")]
        + ["--out", str(out), "--n", "2", "--max-new-tokens", "16"]
    )
    pictures = sorted(out.glob("*.png"))
    assert len(pictures) == 2 and all(p.read_bytes()[:8] == PNG for p in pictures)
    assert "wrote 2 pictures" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such dataset directory"):
        main(["viz", "--policy", str(tmp_path / "policy"), "--data", str(tmp_path / "nope"), "--out", str(out)])


def test_a_picture_as_pixels_is_the_png_and_reads_back_from_tensorboard(tmp_path):
    import matplotlib.image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rl.runtime.metrics import MetricsLog

    sample = generate_sample(2, 3, num_points=256, image_size=64, num_kpts=4)
    answer = target_text(sample, Quant())
    pixels = draw(sample, answer, Quant(), {"bbox3d": 1.0})
    assert pixels.dtype == np.uint8 and pixels.shape == (500, 1000, 3) and pixels.std() > 10
    draw(sample, answer, Quant(), {"bbox3d": 1.0}, tmp_path / "same.png")
    png = matplotlib.image.imread(tmp_path / "same.png")[..., :3]  # float RGB in [0, 1]
    assert np.array_equal(np.round(png * 255).astype(np.uint8), pixels)  # one drawing, two destinations

    log = MetricsLog(tmp_path / "run", "viz", steps=4)
    tag = f"eval/picture/{sample.uid}"
    log.log(1, {"eval/iou3d": 1.0}, echo=False, images={tag: pixels})
    log.close()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images(tag)
    assert image.step == 2 and (image.height, image.width) == (500, 1000)
    (tmp_path / "logged.png").write_bytes(image.encoded_image_string)
    logged = matplotlib.image.imread(tmp_path / "logged.png")
    assert np.array_equal(np.round(logged[..., :3] * 255).astype(np.uint8), pixels)


def test_drawn_pictures_by_uid_and_none_without_matplotlib(tmp_path):
    from rl.eval.viz import drawn, pictures_to_draw

    samples = [generate_sample(2, i, num_points=256, image_size=32, num_kpts=2) for i in range(2)]
    pictures = drawn(samples, ["not json", target_text(samples[1])], Quant())
    assert list(pictures) == [s.uid for s in samples] and all(p.shape[-1] == 3 for p in pictures.values())
    assert drawn([], [], Quant()) == {} and pictures_to_draw(2) == 2 and pictures_to_draw(0) == 0
    # a machine without matplotlib (a dev dependency only): the count drops to 0 with one warning, the run goes on
    script = "import sys; sys.modules['matplotlib'] = None; from rl.eval.viz import pictures_to_draw; print(pictures_to_draw(2))"
    repository = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": repository},
    )
    warning, count = done.stdout.splitlines()
    assert count == "0" and warning.startswith("warning: eval.pictures=2 but matplotlib is not installed")
