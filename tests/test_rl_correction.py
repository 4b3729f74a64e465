"""Rollout correction (rl/algorithms/correction.py): each mode's weights, masks and statistics on hand-computed cases,
their effect on the clipped surrogate, the config's choice and refusals, and two in-process GRCA steps per mode with
a bfloat16 rollout policy beside the float32 learner."""

from __future__ import annotations

import math

import pytest
import torch

from policies import PointVLM
from policies.tiny import build_tiny_policy
from rl.algorithms import algorithm
from rl.algorithms.correction import CORRECTIONS, rollout_correction
from rl.algorithms.grca import step
from rl.algorithms.losses import clipped_surrogate_loss
from rl.algorithms.update import learn_step, make_learner
from rl.config import CORRECTIONS as CONFIG_CORRECTIONS
from rl.config import ConfigError, correction_mode, recomputes_old_logprobs
from rl.config_loading import load_config
from rl.runtime.local import InProcessSource

BOUNDS = (0.5, 2.0)


def free_logprobs(seed: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf logits (N, T, 7) and each position's log-prob of token 0, which depends on that position's logits only."""
    logits = torch.randn(*shape, 7, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    return logits, torch.log_softmax(logits, -1)[..., 0]


def test_the_config_lists_the_same_corrections():
    assert CONFIG_CORRECTIONS == CORRECTIONS


def test_none_only_measures_the_mismatch():
    learner = torch.tensor([[-1.0, -2.0, -3.0, -float("inf")]])  # off the mask: anything, even -inf
    rollout = learner - torch.tensor([[0.2, -0.4, 0.1, 5.0]])
    weights, keep, stats = rollout_correction(learner, rollout, torch.tensor([[1, 1, 1, 0]]), "none", 2.0, BOUNDS)
    assert weights is None and keep is None
    assert stats["mismatch/log_ratio_mean"] == pytest.approx((0.2 - 0.4 + 0.1) / 3)
    assert stats["mismatch/log_ratio_abs_mean"] == pytest.approx(0.7 / 3)
    assert stats["mismatch/log_ratio_abs_max"] == pytest.approx(0.4)
    assert stats["mismatch/weight_mean"] == pytest.approx((math.exp(0.2) + math.exp(-0.4) + math.exp(0.1)) / 3)
    assert stats["mismatch/weight_max"] == pytest.approx(math.exp(0.2))
    assert "mismatch/masked_fraction" not in stats and "mismatch/truncated_fraction" not in stats


def test_tis_truncates_each_tokens_ratio_at_the_cap_and_counts_what_it_truncated():
    logprobs = torch.log(torch.rand(2, 4, generator=torch.Generator().manual_seed(0)))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    weights, keep, same = rollout_correction(logprobs, logprobs.clone(), mask, "tis", 2.0, BOUNDS)
    assert keep is None and torch.equal(weights, torch.ones(2, 4))
    assert same["mismatch/weight_max"] == 1.0 and same["mismatch/truncated_fraction"] == 0.0
    stale = logprobs - torch.tensor([[1.0, 0.0, 0.0, 9.0], [0.0, -1.0, 9.0, 9.0]])  # masked entries never count
    weights, _, stats = rollout_correction(logprobs, stale, mask, "tis", 2.0, BOUNDS)
    assert stats["mismatch/weight_max"] == pytest.approx(math.e)
    assert stats["mismatch/truncated_fraction"] == pytest.approx(1 / 5)
    assert stats["mismatch/weight_mean"] == pytest.approx((math.e + 3 + math.exp(-1)) / 5)
    assert weights[0, 0] == 2.0 and weights[0, 3] == 1.0 and weights[1, 1] == pytest.approx(math.exp(-1))


def test_tis_is_decoupled_ppo_s_weight_and_keeps_the_gradient_of_a_token_at_the_cap():
    logits, logprobs = free_logprobs(2, (1, 3))
    prox = logprobs.detach()  # the learner's weights before the update: the ratio starts at 1
    # pi_prox / pi_rollout = e^1.5 (truncated at 2), e^0.5 = 1.65 (kept), e^-1 = 0.37 (kept)
    rollout = prox - torch.tensor([[1.5, 0.5, -1.0]])
    advantages, mask = torch.tensor([[-1.0, -1.0, 1.0]]), torch.ones(1, 3)
    weights, _, stats = rollout_correction(prox, rollout, mask, "tis", 2.0, BOUNDS)
    assert torch.allclose(weights, torch.tensor([[2.0, math.exp(0.5), math.exp(-1.0)]]))
    assert stats["mismatch/truncated_fraction"] == pytest.approx(1 / 3)
    loss, info = clipped_surrogate_loss(logprobs, prox, advantages, mask, 0.2, is_weights=weights)
    # ratio 1 everywhere: -(w * A) averaged over the 3 tokens
    assert loss.item() == pytest.approx((2.0 + math.exp(0.5) - math.exp(-1.0)) / 3, rel=1e-5)
    assert info["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    grad = logits.grad.abs().sum(-1)[0]
    assert (grad > 0).all()  # truncation keeps the gradient of a token at the cap (dual-clip would zero it), times C
    plain, plain_logprobs = free_logprobs(2, (1, 3))
    clipped_surrogate_loss(plain_logprobs, prox, advantages, mask, 0.2)[0].backward()
    assert torch.allclose(grad, plain.grad.abs().sum(-1)[0] * weights[0], rtol=1e-5)


def test_icepop_masks_each_token_whose_ratio_leaves_the_bounds_and_keeps_it_in_the_denominator():
    logits, logprobs = free_logprobs(3, (1, 4))
    learner = logprobs.detach()
    # ratios 3 (above 2: masked), 1.5 (kept), 1/4 (below 1/2: masked); the fourth token is off the mask
    log_ratios = torch.tensor([[math.log(3), math.log(1.5), -math.log(4), 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    weights, keep, stats = rollout_correction(learner, learner - log_ratios, mask, "icepop", 2.0, BOUNDS)
    assert weights is None and keep.tolist() == [[False, True, False, True]]
    assert stats["mismatch/masked_fraction"] == pytest.approx(2 / 3)
    assert stats["mismatch/log_ratio_mean"] == pytest.approx(math.log(3 * 1.5 / 4) / 3)
    assert stats["mismatch/log_ratio_abs_max"] == pytest.approx(math.log(4))
    assert stats["mismatch/weight_mean"] == pytest.approx((3 + 1.5 + 0.25) / 3)
    advantages = torch.ones(1, 4)
    loss, _ = clipped_surrogate_loss(logprobs, learner, advantages, mask, 0.2, keep=keep)
    assert loss.item() == pytest.approx(-1 / 3)  # ratio 1: the one kept token's -A over all 3 response tokens
    loss.backward()
    grad = logits.grad.abs().sum(-1)[0]
    assert grad[0] == 0 and grad[1] > 0 and grad[2] == 0 and grad[3] == 0


def test_seq_mask_masks_a_whole_response_by_its_geometric_mean_ratio():
    learner = torch.zeros(3, 3)
    # row 0: mean log-ratio (0.5 - 0.5 + 0.3) / 3 = 0.1, ratio 1.105, kept although its first token's ratio is 1.65;
    # row 1: mean (0.6 + 0.4) / 2 = 0.5 (its third token is off the mask), ratio 1.65 > 1.25: masked whole;
    # row 2: mean -0.3, ratio 0.74 < 0.8: masked whole
    log_ratios = torch.tensor([[0.5, -0.5, 0.3], [0.6, 0.4, 9.0], [-0.3, -0.3, -0.3]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    weights, keep, stats = rollout_correction(learner, learner - log_ratios, mask, "seq_mask", 2.0, (0.8, 1.25))
    assert weights is None
    assert keep.tolist() == [[True, True, True], [False, False, True], [False, False, False]]
    assert stats["mismatch/masked_fraction"] == pytest.approx(5 / 8)
    assert stats["mismatch/log_ratio_mean"] == pytest.approx((0.3 + 1.0 - 0.9) / 8)
    assert stats["mismatch/log_ratio_abs_max"] == pytest.approx(0.6)
    # icepop with the same bounds masks every response token here (each token's ratio is outside them), row 0's too
    _, token_keep, _ = rollout_correction(learner, learner - log_ratios, mask, "icepop", 2.0, (0.8, 1.25))
    assert token_keep.tolist() == [[False, False, False], [False, False, True], [False, False, False]]


def test_a_bad_mode_or_bounds_are_refused():
    ones = torch.ones(1, 2)
    with pytest.raises(ValueError, match="expected one of"):
        rollout_correction(ones, ones, ones, "dual_clip", 2.0, BOUNDS)
    with pytest.raises(ValueError, match="0 < low < high"):
        rollout_correction(ones, ones, ones, "icepop", 2.0, (2.0, 0.5))


@pytest.mark.parametrize(
    "overrides, mode, recomputes",
    [
        ([], "none", False),
        (["rollout.mode=one_step_off", "rollout.max_staleness=1"], "tis", True),  # today's one_step_off
        (["rollout.mode=one_step_off", "rollout.max_staleness=1", "rollout.correction=none"], "none", True),
        (["rollout.correction=icepop"], "icepop", True),  # float32 sync: recomputed only for the correction
        (["rollout.correction=none"], "none", False),
    ],
)
def test_the_default_is_tis_one_step_off_and_none_otherwise_and_a_correction_recomputes(overrides, mode, recomputes):
    cfg = load_config("grca.yaml", overrides)
    assert correction_mode(cfg) == mode and recomputes_old_logprobs(cfg) is recomputes


@pytest.mark.parametrize(
    "config, overrides, refused",
    [
        (
            "grca.yaml",
            ["rollout.correction=tis", "learner.recompute_old_logprobs=false"],
            "learner.recompute_old_logprobs: is false, but rollout.correction=tis compares",
        ),
        ("dpo.yaml", ["rollout.correction=icepop"], "rollout.correction: is icepop, but algo.name=dpo has no ratio"),
        ("grca.yaml", ["rollout.correction_bounds=[2.0,0.5]"], "rollout.correction_bounds: expected [low, high]"),
        ("grca.yaml", ["rollout.correction_bounds=[0.5]"], "rollout.correction_bounds: expected [low, high]"),
        ("grca.yaml", ["rollout.correction_bounds=[0,2]"], "rollout.correction_bounds"),
        ("grca.yaml", ["rollout.correction=dual_clip"], "rollout.correction"),
    ],
)
def test_the_config_refuses_a_correction_that_cannot_run(config, overrides, refused):
    with pytest.raises(ConfigError, match=refused.replace("[", r"\[")):
        load_config(config, overrides)


DATA = ["data.train_size=2", "data.num_points=256", "data.image_size=32", "data.num_kpts=1", "data.use_images=false"]
BATCH = ["rollout.prompts_per_step=2", "learner.micro_batch_size=8", "learner.warmup_steps=0"]


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory):
    """The tiny policy after SFT on its two training objects (as tests/test_grca_step.py teaches it: the rewards
    vary within each group), saved."""
    cfg = load_config("sft.yaml", [*DATA, *BATCH, "sft.align_weight=0", "learner.lr=3e-3", "run.steps=100"])
    policy, sft = build_tiny_policy(seed=0), algorithm("sft")
    learner, source = make_learner(policy, cfg), InProcessSource(cfg, policy)
    for k in range(cfg.run.steps):
        learn_step(learner, sft, sft.batch(k, source, cfg)[0], cfg)
    path = tmp_path_factory.mktemp("taught") / "policy"
    policy.save_pretrained(path)
    return path


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_two_grca_steps_with_a_bfloat16_rollout_policy_beside_the_float32_learner(taught_dir, correction):
    # tight bounds, so that the bfloat16 rollout's small mismatch (measured: |log-ratio| 0.005 on average, 0.26 at most;
    # geometric-mean ratios 0.996 to 1.004) masks
    # some tokens; a cap of 1.01 likewise truncates some
    cfg = load_config(
        "grca.yaml",
        [*DATA, *BATCH, "rollout.group_size=4", "rollout.max_new_tokens=100", "learner.lr=1e-4",
         f"rollout.correction={correction}", "rollout.correction_bounds=[0.999,1.001]", "algo.max_is_weight=1.01",
         "learner.recompute_old_logprobs=true"],
    )  # fmt: skip
    policy = PointVLM.from_pretrained(taught_dir)
    rollout_policy = PointVLM.from_pretrained(taught_dir, llm_dtype="bfloat16")
    source, learner = InProcessSource(cfg, policy, rollout_policy), make_learner(policy, cfg)
    before = {k: v.clone() for k, v in policy.trainable_state_dict().items()}
    rows = [step(k, source, learner, cfg) for k in range(2)]
    for row in rows:
        assert 0 < row["mismatch/log_ratio_abs_max"] < 1  # bfloat16 sampling, float32 scoring
        assert row["learner/grad_norm"] > 0 and math.isfinite(row["loss/total"])
        if correction == "tis":
            assert 0 < row["mismatch/truncated_fraction"] < 1
        if correction in ("icepop", "seq_mask"):
            assert 0 < row["mismatch/masked_fraction"] < 1
        if correction == "none":
            assert "mismatch/masked_fraction" not in row and "mismatch/truncated_fraction" not in row
    assert any(not torch.equal(before[k], v) for k, v in policy.trainable_state_dict().items())
    # the rollout policy samples the learner's weights: after the first update, in bfloat16
    assert rollout_policy.llm.dtype == torch.bfloat16
