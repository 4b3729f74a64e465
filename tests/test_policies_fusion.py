"""The camera-guided fusion (policies/fusion.py): its projection is rewards.camera's, its bias draws each point token to
the patch under its projection, it trains, saves and loads, and a folder saved before it loads as the learned fusion."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from data3d import generate_sample
from data3d.render import fit_camera, orbit_eye
from policies import PointVLM, build_tiny_policy, tiny_config
from policies.fusion import GeometryGuidedFusion, project_centres
from policies.image_encoder import patch_centres
from policies.inputs import image_projections
from rewards.camera import project
from rollout.batching import policy_inputs


def views(clouds: torch.Tensor, images: list) -> list:
    """A camera fitted to each cloud from its own side, for the rows with an image (None for the others): the
    projections a test hands `PointVLM.prepare` for clouds and images that are not a benchmark's."""
    return [
        None
        if image is None
        else fit_camera(
            cloud[:, :3].double().numpy(), orbit_eye(20, 50 * i, 3.0), 0.8, image.shape[1], image.shape[0]
        ).image_projection()
        for i, (cloud, image) in enumerate(zip(clouds, images))
    ]


@pytest.fixture(scope="module")
def samples():
    return [generate_sample(3, i, num_points=256, image_size=32) for i in range(4)]


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(seed=0, config=tiny_config(fusion="camera"))


def test_the_fusion_projects_points_where_rewards_camera_does(samples):
    projections = image_projections([s.camera.image_projection() for s in samples], torch.ones(4, dtype=torch.bool))
    points = torch.from_numpy(np.stack([s.points[:, :3] for s in samples]))
    uv, depth = project_centres(points, projections)
    for s, uv_s, depth_s in zip(samples, uv, depth):
        pixels, expected_depth = project(s.points[:, :3].astype(np.float64), s.camera.K, s.camera.R, s.camera.t)
        expected = pixels / [s.camera.width, s.camera.height]
        assert np.abs(uv_s.numpy() - expected).max() < 1e-5 and (0 < expected).all() and (expected < 1).all()
        assert np.abs(depth_s.numpy() - expected_depth).max() < 1e-5


@pytest.mark.parametrize("fusion", ["learned", "camera"])
def test_with_zeroed_weights_a_point_token_attends_most_to_the_patch_under_its_projection(samples, fusion):
    # 16 one-hot image tokens pass unchanged (up to the LayerNorm's shift and scale) through identity value and output
    # maps, so each fused point token is its attention row; zeroed queries and keys leave the camera bias alone
    grid, heads = 4, 2
    module = GeometryGuidedFusion(grid * grid, grid * grid, heads, fusion)
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
        module.image_in.weight.copy_(torch.eye(grid * grid))
        module.attn.in_proj_weight[2 * grid * grid :].copy_(torch.eye(grid * grid))
        module.attn.out_proj.weight.copy_(torch.eye(grid * grid))
        module.norm_image.weight.fill_(1.0)
        if fusion == "camera":  # zeroed, as every other weight: a bias of -|uv - patch|^2 in each head
            assert module.camera_log_scale.shape == (heads,)
    sample = samples[0]
    centers = torch.from_numpy(sample.points[None, :64, :3])
    projection = image_projections([sample.camera.image_projection()], torch.ones(1, dtype=torch.bool))
    with torch.no_grad():
        fused = module(
            torch.zeros(1, 65, grid * grid),
            centers,
            torch.eye(grid * grid)[None],
            patch_centres(grid),
            torch.ones(1, dtype=torch.bool),
            projection,
        )[0, 1:]
    pixels, _ = project(sample.points[:64, :3].astype(np.float64), sample.camera.K, sample.camera.R, sample.camera.t)
    col, row = (np.floor(pixels / [sample.camera.width, sample.camera.height] * grid).astype(int)).T
    if fusion == "learned":  # without the camera the attention has nothing to go on: uniform
        assert (fused - fused[:, :1]).abs().max() < 1e-6
    else:
        assert fused.argmax(-1).tolist() == (row * grid + col).tolist()


def test_gradients_reach_the_camera_bias_and_an_image_without_a_camera_is_named(policy, samples):
    inputs = policy_inputs(policy, samples[:2])
    ids, mask = policy.tokenize_responses(['{"answer":"chair"}', "red"])
    policy.zero_grad()
    policy.logprobs(inputs, ids, mask).sum().backward()
    grad = policy.fusion.camera_log_scale.grad
    assert grad is not None and torch.isfinite(grad).all() and (grad != 0).all()
    mixed = policy_inputs(policy, [samples[0], replace(samples[1], image=None), samples[2]])
    assert torch.equal(mixed.select([2, 1, 0]).projections, mixed.projections[[1, 0]])  # the image rows' cameras
    no_camera = policy.prepare(["a"], inputs.points[:1], [torch.zeros(32, 32, 3, dtype=torch.uint8)], [None])
    assert no_camera.projections is None
    with pytest.raises(ValueError, match="the camera fusion needs each image's camera"):
        policy.embed(no_camera)


def test_a_camera_fusion_policy_reloads_bit_exact(policy, samples, tmp_path):
    with torch.no_grad():
        policy.fusion.camera_log_scale.add_(torch.tensor([0.3, -0.2, 0.1, 0.5]))  # not its initial values
    inputs = policy_inputs(policy, samples)
    ids, mask = policy.tokenize_responses(["a", "chair", "[1, 2]", '{"answer":"mug"}'])
    policy.save_pretrained(tmp_path)
    loaded = PointVLM.from_pretrained(tmp_path)
    assert loaded.config.fusion == "camera"
    saved, again = policy.state_dict(), loaded.state_dict()
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    with torch.no_grad():
        assert torch.equal(policy.eval().logprobs(inputs, ids, mask), loaded.eval().logprobs(inputs, ids, mask))


def test_a_folder_saved_before_the_switch_loads_as_the_learned_fusion(samples, tmp_path):
    learned = build_tiny_policy(seed=1).eval()
    learned.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "pointvlm.json").read_text())
    del config["fusion"]
    (tmp_path / "pointvlm.json").write_text(json.dumps(config))
    old = PointVLM.from_pretrained(tmp_path).eval()
    assert old.config.fusion == "learned" and old.fusion.camera_log_scale is None
    inputs = policy_inputs(old, samples)
    ids, mask = old.tokenize_responses(["a", "b", "c", "d"])
    with torch.no_grad():
        assert torch.equal(old.logprobs(inputs, ids, mask), learned.logprobs(inputs, ids, mask))
    # a run's policy.fusion=camera adds the bias to it, with the initial scales and every saved weight as it was
    switched = PointVLM.from_pretrained(tmp_path, fusion="camera")
    fresh = GeometryGuidedFusion(64, 64, 4, "camera").camera_log_scale
    assert torch.equal(switched.fusion.camera_log_scale, fresh)
    kept = old.state_dict()
    assert all(torch.equal(v, kept[k]) for k, v in switched.state_dict().items() if k != "fusion.camera_log_scale")
