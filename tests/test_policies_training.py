"""Which parts train (gradients reach exactly them) and that the tiny policy can fit a small set through its clouds."""

import time

import torch

from policies import build_tiny_policy, tiny_config
from policies.tiny import CATEGORIES


def batch(policy, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(n, 256, 6, generator=g) * 2 - 1
    pictures = [torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8) for _ in range(n)]
    inputs = policy.prepare(["What is this object?"] * n, points, pictures)
    return inputs, policy.tokenize_responses([f'{{"answer": "{c}"}}' for c in CATEGORIES[:n]])


def nll(policy, inputs, responses):
    logprobs = policy.logprobs(inputs, *responses)
    return -logprobs.sum() / responses[1].sum()


def backward_twice(policy):
    """Two SGD steps, so that parameters whose first gradient is zero by construction (LoRA's A while B = 0)
    get a real one on the second pass."""
    inputs, responses = batch(policy)
    optimizer = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        nll(policy, inputs, responses).backward()
        grads = {n: p.grad for n, p in policy.named_parameters()}
        optimizer.step()
    return grads


def part_of(name: str) -> str:
    return name.split(".")[0]


# a key bias shifts every attention logit of a query equally, so softmax makes its gradient vanish exactly
ZERO_GRADIENT_BY_CONSTRUCTION = ("k_proj.bias",)


def assert_gradients(policy, trainable_parts: set[str], lora: bool = False):
    grads = backward_twice(policy)
    for name, p in policy.named_parameters():
        trains = part_of(name) in trainable_parts and (not lora or part_of(name) != "llm" or "lora_" in name)
        assert p.requires_grad == trains, name
        if not trains:
            assert grads[name] is None, name
        else:
            assert grads[name] is not None, name
            if not name.endswith(ZERO_GRADIENT_BY_CONSTRUCTION):
                assert grads[name].abs().sum() > 0, name


def test_default_trains_fusion_projectors_image_encoder_and_the_whole_llm():
    policy = build_tiny_policy(seed=0)
    assert_gradients(policy, {"image_encoder", "fusion", "point_proj", "image_proj", "llm"})


def test_frozen_llm_still_passes_gradients_to_the_projectors():
    policy = build_tiny_policy(seed=0, config=tiny_config(llm_mode="frozen", train_point_encoder=True))
    assert_gradients(policy, {"point_encoder", "image_encoder", "fusion", "point_proj", "image_proj"})


def test_lora_trains_only_the_adapters_in_the_llm():
    policy = build_tiny_policy(seed=0, config=tiny_config(llm_mode="lora", train_image_encoder=False))
    assert any("lora_A" in n for n, _ in policy.named_parameters())
    assert_gradients(policy, {"fusion", "point_proj", "image_proj", "llm"}, lora=True)


def test_trainable_state_syncs_a_rollout_copy():
    learner, rollout = build_tiny_policy(seed=0), build_tiny_policy(seed=0)
    with torch.no_grad():
        for p in learner.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    inputs, responses = batch(learner)
    with torch.no_grad():
        assert not torch.allclose(learner.logprobs(inputs, *responses), rollout.logprobs(inputs, *responses))
        rollout.load_trainable_state_dict(learner.trainable_state_dict())
        assert torch.equal(learner.logprobs(inputs, *responses), rollout.logprobs(inputs, *responses))


def test_tiny_policy_overfits_eight_samples_by_reading_their_clouds():
    """Same instruction for all eight: the answers can only be told apart through the point clouds."""
    torch.manual_seed(0)
    policy = build_tiny_policy(seed=0, config=tiny_config(image=None))
    g = torch.Generator().manual_seed(0)
    points = torch.rand(8, 256, 6, generator=g) * 2 - 1
    targets = [f'{{"answer": "{c}"}}' for c in CATEGORIES[:8]]
    inputs = policy.prepare(["What is this object?"] * 8, points)
    responses = policy.tokenize_responses(targets)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3, weight_decay=0.0)
    start = time.monotonic()
    first = None
    for step in range(400):
        logprobs = policy.logprobs(inputs, *responses)
        loss = -logprobs.sum() / responses[1].sum()
        first = first if first is not None else loss.item()
        # every target token above probability 1/2 means greedy decoding reproduces each target exactly
        fitted = (logprobs[responses[1] == 1] > -0.69).all()
        if loss.item() < first / 10 and fitted:
            break
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    print(f"overfit: loss {first:.3f} -> {loss.item():.4f} in {step} steps, {time.monotonic() - start:.1f} s")
    assert loss.item() < first / 10 and fitted, (step, loss.item())
    assert policy.generate(inputs, do_sample=False, max_new_tokens=12).texts == targets


def test_an_alignment_head_added_to_a_saved_policy_trains_and_round_trips(tmp_path):
    from policies import PointVLM
    from rl.algorithms.losses import cloud_alignment_loss
    from rl.config import ALIGN_CATEGORIES, ALIGN_DIMS

    build_tiny_policy(out_dir=tmp_path / "plain", seed=0)
    policy = PointVLM.from_pretrained(tmp_path / "plain", align_dims=ALIGN_DIMS, train_point_encoder=True)
    inputs, _ = batch(policy)
    box = inputs.points[:, :, :3].amin(1).repeat(1, 2)  # any function of the cloud will do
    box[:, 3:] = inputs.points[:, :, :3].amax(1)
    category, colour = torch.arange(4), torch.arange(4) % 3
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(60):
        loss, _ = cloud_alignment_loss(policy.align_logits(inputs), box, category, colour, len(ALIGN_CATEGORIES))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])
    # the learner takes the head's outputs from the log-prob pass: the same numbers, one point-encoder pass
    responses = policy.tokenize_responses(["{}"] * 4)
    logprobs, outputs = policy.logprobs(inputs, *responses, align=True)
    assert logprobs.shape == responses[0].shape and torch.equal(outputs, policy.align_logits(inputs))
    policy.save_pretrained(tmp_path / "aligned")
    again = PointVLM.from_pretrained(tmp_path / "aligned")
    assert again.config.align_dims == ALIGN_DIMS
    assert torch.equal(again.align_logits(inputs), policy.align_logits(inputs))
