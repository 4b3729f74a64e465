"""ROSS3D's reconstructive loss for point patches: the patch mask, the Chamfer loss, the masked pass through the real
tiny policy (what it hides, what it returns, that it trains), its head saved and loaded, and the learner's SFT and
GRCA updates with it switched on."""

from __future__ import annotations

import pytest
import torch

from data3d import generate_sample
from policies import PointVLM, build_tiny_policy, tiny_config
from policies.reconstruction import random_patch_mask
from rl.algorithms import algorithm
from rl.algorithms.batch import LearnBatch, rollout_batch
from rl.algorithms.losses import patch_reconstruction_loss
from rl.algorithms.update import learn_step, make_learner
from rl.config import policy_overrides, run_quant
from rl.config_loading import ConfigError, load_config
from rollout.batching import policy_inputs
from rollout.engine import SamplingConfig
from rollout.hf_engine import HFEngine


def clouds(policy, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 256, 6, generator=g) * 2 - 1
    return policy.prepare(["What is this object?"] * n, points)


@pytest.mark.parametrize("ratio, patches, count", [(0.25, 32, 8), (0.5, 32, 16), (0.01, 32, 1), (0.99, 4, 3)])
def test_the_patch_mask_hides_the_ratio_of_each_row_at_least_one_and_never_all(ratio, patches, count):
    mask = random_patch_mask(6, patches, ratio, torch.Generator().manual_seed(0))
    assert mask.shape == (6, patches) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [count] * 6
    assert len({tuple(row.tolist()) for row in mask}) > 1  # each row draws its own patches


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.5])
def test_a_patch_mask_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
        random_patch_mask(2, 32, ratio)


def test_chamfer_loss_is_zero_for_the_same_points_in_any_order_and_about_one_at_the_centre():
    target = torch.randn(5, 16, 3)
    shuffled = target[:, torch.randperm(16)]
    loss, stats = patch_reconstruction_loss(shuffled, target)
    assert loss.item() < 1e-6 and stats["recon_chamfer"] < 1e-6
    at_centre, _ = patch_reconstruction_loss(torch.zeros(5, 16, 3), target)
    assert 1.0 <= at_centre.item() < 1.5
    # scale-free: the same relative error scores the same on a cloud ten times larger
    noisy = target + 0.1 * torch.randn(5, 16, 3)
    small, _ = patch_reconstruction_loss(noisy, target)
    large, _ = patch_reconstruction_loss(10 * noisy, 10 * target)
    assert torch.allclose(small, large, rtol=1e-4)
    with pytest.raises(ValueError, match="must be \\(M, k, 3\\)"):
        patch_reconstruction_loss(torch.zeros(5, 16, 2), target)


@pytest.fixture(scope="module")
def policy():
    return build_tiny_policy(seed=0, config=tiny_config(image=None, recon_head=True)).eval()


def test_a_masked_patch_enters_the_encoder_as_the_mask_token_and_leaks_nothing(policy):
    encoder = policy.point_encoder
    groups, centers = encoder.group(clouds(policy).points)
    mask = random_patch_mask(4, encoder.config.num_groups, 0.25, torch.Generator().manual_seed(1))
    other = torch.where(mask[..., None, None], torch.randn_like(groups), groups)  # other points in the masked patches
    token = policy.recon_head.mask_token
    with torch.no_grad():
        masked = encoder.encode(groups, centers, mask, token)
        assert torch.equal(masked, encoder.encode(other, centers, mask, token))
        assert not torch.allclose(encoder.encode(groups, centers), encoder.encode(other, centers))


def test_reconstruct_patches_returns_each_masked_patch_and_its_true_points(policy):
    inputs = clouds(policy)
    mask = random_patch_mask(4, 32, 0.25, torch.Generator().manual_seed(2))
    with torch.no_grad():
        predicted, target = policy.reconstruct_patches(inputs, mask)
        groups, _ = policy.point_encoder.group(inputs.points)
    assert predicted.shape == target.shape == (int(mask.sum()), 16, 3)
    assert torch.equal(target, groups[mask][..., :3])


def test_the_reconstruction_loss_trains_through_a_frozen_encoder_and_falls(tmp_path):
    policy = build_tiny_policy(seed=0, config=tiny_config(image=None, recon_head=True, train_point_encoder=False))
    inputs = clouds(policy, n=8)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    generator, losses = torch.Generator().manual_seed(0), []
    for step in range(40):
        loss, _ = patch_reconstruction_loss(
            *policy.reconstruct_patches(inputs, random_patch_mask(8, 32, 0.25, generator))
        )
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert policy.recon_head.mask_token.grad.abs().sum() > 0
            assert all(p.grad is None for p in policy.point_encoder.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * losses[0], (losses[0], losses[-5:])


def test_a_head_added_to_a_saved_policy_starts_fresh_then_round_trips(tmp_path, policy):
    build_tiny_policy(out_dir=tmp_path / "plain", seed=0, config=tiny_config(image=None))
    added = PointVLM.from_pretrained(tmp_path / "plain", recon_head=True)
    assert added.recon_head is not None
    policy.save_pretrained(tmp_path / "with-head")
    again = PointVLM.from_pretrained(tmp_path / "with-head")
    assert again.config.recon_head
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.recon_head.state_dict().values(), policy.recon_head.state_dict().values())
    )


def test_config_switches_the_head_on_per_stage_and_refuses_a_full_mask():
    assert policy_overrides(load_config("grca.yaml", ["recon.rl_weight=0.5"])).get("recon_head")
    assert not policy_overrides(load_config("grca.yaml", ["recon.sft_weight=0.5"])).get("recon_head")
    assert policy_overrides(load_config("sft.yaml", ["recon.sft_weight=0.5"])).get("recon_head")
    with pytest.raises(ConfigError, match="recon.mask_ratio"):
        load_config("grca.yaml", ["recon.mask_ratio=1.0"])


G = 2


@pytest.mark.parametrize("algo", ["sft", "grca"])
def test_the_learner_adds_the_weighted_reconstruction_loss_to_sft_and_grca(algo):
    cfg = load_config(
        f"{algo}.yaml",
        [f"rollout.group_size={G}", "learner.micro_batch_size=2", "recon.sft_weight=0.5", "recon.rl_weight=0.5"],
    )
    policy = build_tiny_policy(seed=0, config=tiny_config(**policy_overrides(cfg))).eval()
    samples = [generate_sample(0, i, num_points=256, image_size=32, num_kpts=1) for i in range(2)]
    learner = make_learner(policy, cfg)
    if algo == "sft":
        batch = LearnBatch(step=0, version=0, samples=samples, group_size=1, response_texts=['{"answer": "x"}'] * 2)
    else:
        inputs = policy_inputs(policy, samples, run_quant(cfg), cfg.data.use_images)
        rollout = HFEngine(policy).generate(inputs, [s.uid for s in samples], SamplingConfig(n=G, max_new_tokens=8))
        advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])[:, None] * rollout.response_mask
        batch = rollout_batch(0, rollout, samples, torch.ones(2 * G, dtype=torch.bool), advantages=advantages)
    before = policy.recon_head.mask_token.detach().clone()
    stats = learn_step(learner, algorithm(algo), batch, cfg)
    assert 0.0 < stats["loss/recon"] < 10.0
    assert not torch.equal(before, policy.recon_head.mask_token)  # the head trained in the same optimizer step
