"""One GRPO/GRCA learner pass (forward and backward over P prompts x G samples) as the learner runs it now, beside the
way it ran before in the same run and interleaved with it: each prompt's inputs repeated G times (every cloud and image
encoded G times, every prompt run through the LLM G times) and the old policy's log-probs recomputed in one more
forward pass instead of taken from the rollout. Now each cloud is encoded, and each prompt's prefix run, once.
  python bench/learner_bench.py [--hidden 128] [--layers 4] [--prompts 8] [--group 4] [--micro 16] [--repeats 6]
The default policy is the demo's (hidden 128, 4 layers, its point and image encoders), on the demo's data settings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from data3d import generate_sample
from policies.inputs import PolicyInputs
from policies.tiny import build_tiny_policy
from policies.vlm import PointVLM
from rl.algorithms.update import answered_prompts, micro_batches
from rl.config import DATA_DEFAULTS
from rollout.batching import policy_inputs


def before(policy: PointVLM, prompts, owners: list[int], responses, micro: int) -> float:
    """The old learner: a no-grad recompute pass, then forward and backward, both on G-times repeated inputs."""
    began = time.perf_counter()
    repeated = prompts.select(owners)
    with torch.no_grad():
        for rows in micro_batches(len(owners), micro):
            policy.logprobs(repeated.select(rows), responses.response_ids[rows], responses.response_mask[rows], 0.5)
    for rows in micro_batches(len(owners), micro):
        logp = policy.logprobs(repeated.select(rows), responses.response_ids[rows], responses.response_mask[rows], 0.5)
        logp.sum().backward()
    return time.perf_counter() - began


def after(policy: PointVLM, prompts, owners: list[int], responses, micro: int) -> float:
    """The learner now: the rollout's log-probs as the old policy's, and each prompt encoded and run through the LLM
    once per micro-batch (its G responses continue from its KV cache)."""
    began = time.perf_counter()
    for rows in micro_batches(len(owners), micro):
        answered, expand = answered_prompts(prompts, [owners[r] for r in rows])
        ids, mask = responses.response_ids[rows], responses.response_mask[rows]
        policy.logprobs(answered, ids, mask, 0.5, expand=expand).sum().backward()
    return time.perf_counter() - began


def demo_arguments(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options of a benchmark on the demo-sized policy: its size, the batch, the interleaved rounds, threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def demo_policy_and_prompts(args: argparse.Namespace) -> tuple[PointVLM, PolicyInputs]:
    """A tiny policy of the demo's size and `args.prompts` prompts on the demo's data settings; sets the threads."""
    torch.set_num_threads(args.threads)
    policy = build_tiny_policy(seed=0, hidden_size=args.hidden, num_layers=args.layers)
    d = DATA_DEFAULTS
    samples = [
        generate_sample(0, i, num_points=d.num_points, image_size=d.image_size, num_kpts=d.num_kpts)
        for i in range(args.prompts)
    ]
    return policy, policy_inputs(policy, samples)


def main() -> None:
    parser = demo_arguments(__doc__.splitlines()[0], repeats=6)
    parser.add_argument("--micro", type=int, default=16)
    args = parser.parse_args()
    policy, prompts = demo_policy_and_prompts(args)
    with torch.no_grad():
        responses = policy.eval().generate(prompts, num_return_sequences=args.group, max_new_tokens=160, seed=0)
    owners = [row // args.group for row in range(len(responses.response_ids))]
    policy.train()
    runs = {"before": [], "after": []}
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        for name, run in (("before", before), ("after", after)):
            policy.zero_grad(set_to_none=True)
            runs[name].append(run(policy, prompts, owners, responses, args.micro))
    old, new = statistics.median(runs["before"]), statistics.median(runs["after"])
    tokens = int(responses.response_mask.sum())
    print(
        f"learner pass, {args.prompts} prompts x G {args.group} ({tokens} response tokens), micro-batches of "
        f"{args.micro}, {args.threads} threads, median of {args.repeats}: before {old:.3f} s, now {new:.3f} s, "
        f"{old / new:.2f}x faster"
    )


if __name__ == "__main__":
    main()
