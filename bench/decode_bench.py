"""Rollout decoding (P prompts x G samples) as the HF engine runs it now, beside the way it ran before in the same run
and interleaved with it: transformers' `generate` on the prompt embeddings repeated G times (each prefix computed G
times, each token drawn by `torch.multinomial`) against `PointVLM.generate`'s own loop
(`policies.generation.sample_responses`: each prefix computed once, its KV cache repeated G times, each token drawn by
`draw_tokens` from one uniform number per row). Both decode exactly --tokens tokens per sample (the stop tokens are
suppressed until then), so they do equal work; the benchmark also checks that greedy decoding gives both the same
tokens.
  python bench/decode_bench.py [--hidden 128] [--layers 4] [--prompts 8] [--group 4] [--tokens 160] [--repeats 5]
The default policy is the demo's size (hidden 128, 4 layers, its point and image encoders), on the demo's data settings.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ as a package, when run as a script

from bench.learner_bench import demo_arguments, demo_policy_and_prompts  # noqa: E402
from policies.vlm import PointVLM  # noqa: E402


def before(policy: PointVLM, prompts, group: int, tokens: int, temperature: float) -> tuple[float, torch.Tensor]:
    """The old engine: transformers' generate on G-times repeated embeddings (temperature 0: greedy)."""
    began = time.perf_counter()
    embeds, mask = policy.embed(prompts)
    torch.manual_seed(0)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature else {"do_sample": False}
    ids = policy.llm.generate(
        inputs_embeds=embeds.repeat_interleave(group, 0),
        attention_mask=mask.repeat_interleave(group, 0),
        **sampling,
        max_new_tokens=tokens,
        min_new_tokens=tokens,
        eos_token_id=policy.stop_ids,
        pad_token_id=policy.tokenizer.pad_token_id,
    )
    return time.perf_counter() - began, ids


def after(policy: PointVLM, prompts, group: int, tokens: int, temperature: float) -> tuple[float, torch.Tensor]:
    """The engine now: `PointVLM.generate`, the prefix shared by the group (temperature 0: greedy)."""
    began = time.perf_counter()
    sampling = {"temperature": temperature} if temperature else {"do_sample": False}
    out = policy.generate(prompts, group, **sampling, max_new_tokens=tokens, min_new_tokens=tokens, seed=0)
    return time.perf_counter() - began, out.response_ids


def main() -> None:
    parser = demo_arguments(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args()
    if args.temperature <= 0:
        parser.error("--temperature must be > 0: the timed runs sample")
    policy, prompts = demo_policy_and_prompts(args)
    policy.eval()
    runs: dict[str, list[float]] = {"before": [], "after": []}
    drawn = {}
    with torch.no_grad():
        for _ in range(args.repeats):  # interleaved, so that both see the same machine
            for name, run in (("before", before), ("after", after)):
                seconds, drawn[name] = run(policy, prompts, args.group, args.tokens, args.temperature)
                runs[name].append(seconds)
        # not timed: greedy decoding, where both must choose the same tokens
        same = torch.equal(*(run(policy, prompts, args.group, args.tokens, 0.0)[1] for run in (before, after)))
    old, new = statistics.median(runs["before"]), statistics.median(runs["after"])
    print(
        f"rollout decoding, {args.prompts} prompts x G {args.group}, {drawn['after'].shape[1]} steps, prompts of "
        f"{prompts.input_ids.shape[1]} tokens, {args.threads} threads, median of {args.repeats} "
        f"(before {min(runs['before']):.3f}-{max(runs['before']):.3f} s, now {min(runs['after']):.3f}-"
        f"{max(runs['after']):.3f} s): before {old:.3f} s, now {new:.3f} s, {old / new:.2f}x faster; "
        f"same greedy tokens: {'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
