"""Real-data loaders on tiny files in each format: ShapeNetCore v2 .obj, ModelNet40 .txt, PointLLM Objaverse .npy + JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from data3d.loaders import iter_modelnet40, iter_objaverse, iter_shapenet, read_pointllm_npy
from data3d.primitives import sample_surface
from data3d.settings import DataSettings
from data3d.store import BenchmarkDataset, write_dataset

SMALL = dict(num_points=256, image_size=64)


def assert_valid(sample):
    t, xyz = sample.targets, sample.points[:, :3]
    assert sample.points.shape == (256, 6) and sample.points.dtype == np.float32
    assert np.linalg.norm(xyz, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    assert ((xyz >= t.bbox3d[:3]) & (xyz <= t.bbox3d[3:])).all() and t.kpts3d.shape == (DataSettings().num_kpts, 3)
    assert ((t.kpts2d > t.bbox2d[:2]) & (t.kpts2d < t.bbox2d[2:])).all() and (t.bbox2d[2:] - t.bbox2d[:2] >= 8).all()
    assert sample.image.shape == (64, 64, 3) and (sample.image != 250).any()


@pytest.fixture
def shapenet(tmp_path):
    mesh = trimesh.util.concatenate([trimesh.creation.box((1.0, 0.1, 0.6)), trimesh.creation.cylinder(0.05, 1.0)])
    mesh.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(mesh.vertices), 1))
    for synset, model in [("03001627", "m1"), ("04379243", "m2")]:
        folder = tmp_path / synset / model / "models"
        folder.mkdir(parents=True)
        mesh.export(folder / "model_normalized.obj")
    return tmp_path


def test_shapenet_models_become_samples(shapenet):
    samples = list(iter_shapenet(shapenet, **SMALL))
    assert [s.uid for s in samples] == ["shapenet-03001627-m1", "shapenet-04379243-m2"]
    assert [s.targets.category for s in samples] == ["chair", "table"]
    for s in samples:
        assert_valid(s)
        assert s.targets.answers[0] == s.targets.category and s.question_type == "category"
        assert np.allclose(s.points[:, 3:], [200 / 255, 30 / 255, 30 / 255], atol=1e-6)  # the file's colours
    only = list(iter_shapenet(shapenet, synsets=["04379243"], **SMALL))
    assert [s.uid for s in only] == ["shapenet-04379243-m2"]
    assert np.array_equal(only[0].points, samples[1].points)  # independent of the other files


def test_shapenet_texture_colours_are_read(tmp_path):
    from PIL import Image

    mesh = trimesh.creation.box((1.0, 0.5, 0.8))
    uv = np.random.default_rng(0).random((len(mesh.vertices), 2))
    mesh.visual = trimesh.visual.TextureVisuals(
        uv=uv, image=Image.fromarray(np.full((8, 8, 3), [20, 180, 60], np.uint8))
    )
    folder = tmp_path / "02876657" / "tex" / "models"
    folder.mkdir(parents=True)
    mesh.export(folder / "model_normalized.obj")  # writes the .mtl and the texture image beside it
    [sample] = list(iter_shapenet(tmp_path, **SMALL))
    assert sample.targets.category == "bottle"
    assert np.allclose(sample.points[:, 3:], np.array([20, 180, 60]) / 255, atol=1e-6)


def test_shapenet_errors_name_the_file(shapenet, tmp_path):
    broken = shapenet / "03001627" / "m1" / "models" / "model_normalized.obj"
    broken.write_text("this is not an obj file\n")
    with pytest.raises(ValueError, match="m1/models/model_normalized.obj"):
        list(iter_shapenet(shapenet, **SMALL))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list(iter_shapenet(tmp_path / "nowhere"))


def _modelnet_rows(count=3000):
    torus = trimesh.creation.torus(1.0, 0.3)
    xyz, normals, _ = sample_surface(torus.vertices, torus.faces, count, np.random.default_rng(0))
    return np.concatenate([xyz, normals], axis=1)


def test_modelnet_files_become_samples(tmp_path):
    for name in ["night_stand_0001", "chair_0003"]:
        folder = tmp_path / name.rsplit("_", 1)[0]
        folder.mkdir(exist_ok=True)
        np.savetxt(folder / f"{name}.txt", _modelnet_rows(), fmt="%.6f", delimiter=",")
    (tmp_path / "modelnet40_test.txt").write_text("night_stand_0001\n")
    samples = list(iter_modelnet40(tmp_path, **SMALL))
    assert [s.targets.category for s in samples] == ["chair", "night stand"]
    for s in samples:
        assert_valid(s)
        assert s.targets.answers[0] in s.instruction and np.allclose(s.points[:, 3:], 0.6)
    assert [s.uid for s in iter_modelnet40(tmp_path, split="test", **SMALL)] == ["modelnet40-night_stand_0001"]
    write_dataset(tmp_path / "out", {"test": samples}, config={})
    assert [s.uid for s in BenchmarkDataset(tmp_path / "out", "test")] == [s.uid for s in samples]


def test_modelnet_errors_name_the_file(tmp_path):
    (tmp_path / "cup").mkdir()
    np.savetxt(tmp_path / "cup" / "cup_0001.txt", _modelnet_rows()[:, :5], delimiter=",")
    with pytest.raises(ValueError, match="cup_0001.txt.*6 finite numbers"):
        list(iter_modelnet40(tmp_path, **SMALL))
    (tmp_path / "cup" / "cup_0001.txt").write_text("1,2,3,a,b,c\n")
    with pytest.raises(ValueError, match="cup_0001.txt"):
        list(iter_modelnet40(tmp_path, **SMALL))
    with pytest.raises(FileNotFoundError, match="modelnet40_train.txt"):
        list(iter_modelnet40(tmp_path, split="train"))
    np.savetxt(tmp_path / "cup" / "cup_0001.txt", _modelnet_rows(100), delimiter=",")
    with pytest.raises(ValueError, match="cup_0001.txt.*num_points=256"):
        list(iter_modelnet40(tmp_path, **SMALL))


def _objaverse(tmp_path, rgb_scale):
    cone = trimesh.creation.cone(0.5, 1.5)
    xyz, _, _ = sample_surface(cone.vertices, cone.faces, 8192, np.random.default_rng(1))
    rgb = np.stack([np.full(len(xyz), 0.1), xyz[:, 2] / 1.5, np.full(len(xyz), 0.8)], axis=1) * rgb_scale
    np.save(tmp_path / "u1_8192.npy", np.concatenate([xyz, rgb], axis=1).astype(np.float32))
    conversation = [
        {
            "object_id": "u1",
            "conversations": [
                {"from": "human", "value": "<point>\nWhat is this?"},
                {"from": "gpt", "value": "A blue-green cone."},
            ],
        }
    ]
    (tmp_path / "conv.json").write_text(json.dumps(conversation))
    return rgb / rgb_scale


@pytest.mark.parametrize("rgb_scale", [1.0, 255.0])
def test_objaverse_clouds_and_conversations_become_samples(tmp_path, rgb_scale):
    rgb = _objaverse(tmp_path, rgb_scale)
    [sample] = list(iter_objaverse(tmp_path, tmp_path / "conv.json", **SMALL))
    assert_valid(sample)
    assert sample.uid == "objaverse-u1" and sample.instruction == "What is this?"
    assert sample.targets.answers == ["A blue-green cone."] and sample.targets.description == "A blue-green cone."
    _, read_rgb = read_pointllm_npy(tmp_path / "u1_8192.npy")
    assert np.allclose(read_rgb, rgb, atol=1e-5)
    assert sample.points[:, 3:].max() <= 1.0


def test_objaverse_errors_name_the_file(tmp_path):
    _objaverse(tmp_path, 1.0)
    np.save(tmp_path / "u1_8192.npy", np.zeros((10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="u1_8192.npy.*shape"):
        list(iter_objaverse(tmp_path, tmp_path / "conv.json"))
    (tmp_path / "u1_8192.npy").unlink()
    with pytest.raises(FileNotFoundError, match="u1_8192.npy"):
        list(iter_objaverse(tmp_path, tmp_path / "conv.json"))
    no_answer = [{"object_id": "u1", "conversations": [{"from": "human", "value": "hi"}]}]
    (tmp_path / "conv.json").write_text(json.dumps(no_answer))
    with pytest.raises(ValueError, match="conv.json: entry 0.*'gpt'"):
        list(iter_objaverse(tmp_path, tmp_path / "conv.json"))
    (tmp_path / "conv.json").write_text("{not json")
    with pytest.raises(ValueError, match="conv.json: not valid JSON"):
        list(iter_objaverse(tmp_path, tmp_path / "conv.json"))
