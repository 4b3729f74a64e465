"""GPU smoke test: one machine, one CUDA GPU, torch with CUDA, no vLLM and no Ray.

Each section runs on its own (a failure is recorded as an error string and the others still run):
  imports     the Ray-free modules (RAY_FREE) import and pull in neither ray nor vllm;
  logprobs_*  a random-init Point-VLM (tiny fp32, tiny bf16, medium bf16 = Qwen2 hidden 1024 x 16 layers x 16 heads;
              encoders fp32) samples G = 8 responses per prompt with `generate`, and `logprobs` recomputes them in one
              full pass: max and mean |delta| over response tokens must stay under LOGPROB_TOL for the LLM dtype
              (in bf16 the kv-cache steps and the full pass round differently, so the bound is loose);
  fsdp2       one AdamW step through FSDP2 (`fully_shard` per decoder layer then the root, NCCL, world size 1) on the
              tiny fp32 model gives the parameters of the same step on an unsharded copy (max |delta| < FSDP_TOL);
  learner     forward + backward + AdamW on the medium model, prompts x G rows: median seconds and peak memory.

Results go to OUTDIR/gpu_smoke.json (rewritten after each section), a summary to stdout; exit 0 only when every
section passed, 1 otherwise. Without CUDA it prints one line to stderr and exits 2. `--cpu` (for
tests/test_gpu_smoke.py) runs the same sections on the CPU with the tiny fp32 model only, FSDP2 on gloo.

    PYTHONPATH=. python3 infra/gpu_smoke.py OUTDIR        # about a minute on one H200; at most 5
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import traceback
from functools import partial
from pathlib import Path

G = 8
RAY_FREE = (
    "policies",
    "data3d",
    "rewards",
    "rl.algorithms.advantages",
    "rl.algorithms.losses",
    "rl.algorithms.token_spans",
    "rl.config",
    "rl.runtime.metrics",
)
LOGPROB_TOL = {"float32": {"max": 1e-3, "mean": 1e-4}, "bfloat16": {"max": 0.5, "mean": 0.02}}
# fp32 parameters after one AdamW step (which moves them by ~FSDP_LR), and log-probs after it; eps 1e-6 so that a
# near-zero gradient's update is not a +-lr coin flip under CUDA's non-deterministic atomics
FSDP_LR, FSDP_EPS, FSDP_TOL, FSDP_LOGPROB_TOL = 1e-3, 1e-6, 1e-5, 1e-4
MEDIUM = {
    "hidden_size": 1024,
    "num_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "intermediate_size": 2816,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="pointrl GPU smoke test (no Ray, no vLLM); results in OUTDIR")
    p.add_argument("outdir", type=Path)
    p.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)  # testing: CPU, tiny fp32 model, gloo
    p.add_argument("--max-new-tokens", type=int, default=None, help="response length (default 96; 12 with --cpu)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per generate batch, G = 8 samples each")
    p.add_argument("--learner-prompts", type=int, default=4, help="prompts per learner step, G rows each")
    p.add_argument("--timed-steps", type=int, default=3, help="learner steps timed after one warm-up step")
    args = p.parse_args(argv)
    args.max_new_tokens = args.max_new_tokens or (12 if args.cpu else 96)
    return args


def build_policy(size: str, dtype: str, device, seed: int = 0):
    """A random-init PointVLM on `device`: "tiny" (policies.tiny) or "medium" (MEDIUM Qwen2, real encoder sizes)."""
    from policies import PointVLMConfig, build_tiny_policy, tiny_config

    if size == "tiny":
        return build_tiny_policy(seed=seed, config=tiny_config(llm_dtype=dtype)).to(device)
    return build_tiny_policy(seed=seed, config=PointVLMConfig(llm_dtype=dtype), **MEDIUM).to(device)


def make_inputs(policy, count: int, seed: int = 0):
    """`count` benchmark prompts with cloud and image, built as rollout.batching.policy_inputs does (not imported:
    the rollout package imports Ray)."""
    import numpy as np
    import torch

    from data3d import generate_sample, prompt_text
    from rewards.schema import Quant

    num_points = 16 * policy.config.point.num_groups  # tiny: 512, medium: 8192 (PointLLM's cloud size)
    samples = [
        generate_sample(seed, i, num_points=num_points, image_size=policy.config.image.image_size) for i in range(count)
    ]
    points = torch.from_numpy(np.stack([np.asarray(s.points, dtype=np.float32) for s in samples]))
    images = [torch.from_numpy(np.array(s.image)) for s in samples]
    projections = [s.camera.image_projection() for s in samples]
    return policy.prepare([prompt_text(s, Quant()) for s in samples], points, images, projections)


def learner_batch(policy, prompts: int, steps: int, seed: int = 1):
    """prompts x G rows of fixed random responses (lengths steps/2..steps): inputs on the policy's device, ids, mask."""
    import torch

    inputs = make_inputs(policy, prompts).repeat_interleave(G).to(policy.device)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, len(policy.tokenizer), (len(inputs), steps), generator=gen)
    lengths = torch.randint(steps // 2, steps + 1, (len(inputs), 1), generator=gen)
    return inputs, ids, (torch.arange(steps)[None] < lengths).long()


def train_step(policy, optimizer, inputs, ids, mask) -> float:
    """One step on -(mean response-token log-prob); returns the loss."""
    loss = -policy.logprobs(inputs, ids, mask).sum() / mask.sum().item()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def synced_time(device) -> float:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def check_imports(ctx) -> dict:
    for name in RAY_FREE:
        importlib.import_module(name)
    pulled = [m for m in ("ray", "vllm") if m in sys.modules]
    return {"ok": not pulled, "modules": list(RAY_FREE), "pulled_in": pulled}


def check_logprobs(ctx, size: str, dtype: str) -> dict:
    import torch

    policy = build_policy(size, dtype, ctx.device).eval()
    inputs = make_inputs(policy, ctx.prompts)
    start = synced_time(ctx.device)
    out = policy.generate(inputs, num_return_sequences=G, do_sample=True, max_new_tokens=ctx.max_new_tokens, seed=0)
    generated = synced_time(ctx.device)
    with torch.no_grad():
        again = policy.logprobs(inputs.repeat_interleave(G), out.response_ids, out.response_mask)
    done = synced_time(ctx.device)
    mask = out.response_mask.to(again.device).bool()
    delta = (again.float() - out.logprobs.to(again.device).float())[mask].abs()
    tol = LOGPROB_TOL[dtype]
    result = {
        "model": size,
        "llm_dtype": dtype,
        "rows": len(out.response_ids),
        "prompt_tokens": inputs.input_ids.shape[1],
        "response_tokens": int(mask.sum()),
        "max_abs_delta": delta.max().item(),
        "mean_abs_delta": delta.mean().item(),
        "mean_logprob": again[mask].mean().item(),
        "tolerance": tol,
        "generate_s": generated - start,
        "logprobs_s": done - generated,
    }
    result["ok"] = result["max_abs_delta"] < tol["max"] and result["mean_abs_delta"] < tol["mean"]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_fsdp2(ctx) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    from torch.distributed.tensor import DTensor

    backend = "gloo" if ctx.device.type == "cpu" else "nccl"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        plain = build_policy("tiny", "float32", ctx.device).eval()
        sharded = copy.deepcopy(plain)
        mesh = init_device_mesh(ctx.device.type, (1,))
        for layer in sharded.llm.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        register_fsdp_forward_method(sharded, "logprobs")
        before = {n: p.detach().clone() for n, p in plain.named_parameters()}
        batch = learner_batch(plain, ctx.prompts, ctx.max_new_tokens)
        losses = []
        for model in (plain, sharded):
            trainable = [p for p in model.parameters() if p.requires_grad]
            losses.append(train_step(model, torch.optim.AdamW(trainable, lr=FSDP_LR, eps=FSDP_EPS), *batch))
        plain_params = dict(plain.named_parameters())
        param_delta = moved = 0.0
        dtensors = sum(isinstance(p, DTensor) for p in sharded.parameters())
        for name, p in sharded.named_parameters():
            full = (p.full_tensor() if isinstance(p, DTensor) else p).detach()
            param_delta = max(param_delta, (full - plain_params[name].detach()).abs().max().item())
            moved = max(moved, (plain_params[name].detach() - before[name]).abs().max().item())
        with torch.no_grad():
            after = [m.logprobs(*batch) for m in (plain, sharded)]
        logprob_delta = (after[0] - after[1]).abs().max().item()
    finally:
        dist.destroy_process_group()
    ok = param_delta < FSDP_TOL and logprob_delta < FSDP_LOGPROB_TOL and moved > 10 * FSDP_TOL and dtensors > 0
    return {
        "ok": ok,
        "backend": backend,
        "model": "tiny",
        "dtype": "float32",
        "lr": FSDP_LR,
        "eps": FSDP_EPS,
        "tolerance": FSDP_TOL,
        "logprob_tolerance": FSDP_LOGPROB_TOL,
        "dtensor_params": dtensors,
        "loss_plain": losses[0],
        "loss_sharded": losses[1],
        "param_max_abs_delta": param_delta,
        "param_max_abs_step": moved,
        "logprob_max_abs_delta_after_step": logprob_delta,
    }


def check_learner(ctx) -> dict:
    import torch

    size, dtype = ("tiny", "float32") if ctx.device.type == "cpu" else ("medium", "bfloat16")
    policy = build_policy(size, dtype, ctx.device).train()
    batch = learner_batch(policy, ctx.learner_prompts, ctx.max_new_tokens)
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    cuda = ctx.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    seconds, losses = [], []
    for _ in range(1 + ctx.timed_steps):
        start = synced_time(ctx.device)
        losses.append(train_step(policy, optimizer, *batch))
        seconds.append(synced_time(ctx.device) - start)
    gib = 2**30
    return {
        "ok": all(map(math.isfinite, losses)),
        "model": size,
        "llm_dtype": dtype,
        "rows": len(batch[0]),
        "prompt_tokens": batch[0].input_ids.shape[1],
        "response_tokens": batch[1].shape[1],
        "trainable_params": sum(p.numel() for p in trainable),
        "losses": losses,
        "warmup_step_s": seconds[0],
        "step_s_median": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
        "peak_allocated_gib": torch.cuda.max_memory_allocated(ctx.device) / gib if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved(ctx.device) / gib if cuda else None,
    }


def sections(cpu: bool) -> list:
    tiny = [("logprobs_tiny_fp32", partial(check_logprobs, size="tiny", dtype="float32"))]
    if not cpu:
        tiny += [
            ("logprobs_tiny_bf16", partial(check_logprobs, size="tiny", dtype="bfloat16")),
            ("logprobs_medium_bf16", partial(check_logprobs, size="medium", dtype="bfloat16")),
        ]
    return [("imports", check_imports), *tiny, ("fsdp2", check_fsdp2), ("learner", check_learner)]


def run_section(fn, ctx) -> dict:
    import torch

    start = time.perf_counter()
    try:
        result = fn(ctx)
    except Exception as e:  # noqa: BLE001 - a failing section is a recorded result, not the end of the run
        result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - start
    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def environment(ctx) -> dict:
    import torch

    cuda = ctx.device.type == "cuda"
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mode": "cuda" if cuda else "cpu",
        "G": G,
        "max_new_tokens": ctx.max_new_tokens,
        "prompts": ctx.prompts,
        "learner_prompts": ctx.learner_prompts,
        "medium_llm": MEDIUM,
        "device": torch.cuda.get_device_name(ctx.device) if cuda else f"cpu ({platform.machine()})",
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError as e:
        env["transformers"] = f"missing: {e}"
    return env


def summary_line(name: str, result: dict) -> str:
    if "error" in result:
        return f"{name:22s} FAIL  {result['error'][:200]}"
    numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    shown = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items())
    return f"{name:22s} {'ok  ' if result['ok'] else 'FAIL'}  {shown}"


def main(argv: list[str] | None = None) -> int:
    ctx = parse_args(argv)
    import torch

    if not ctx.cpu and not torch.cuda.is_available():
        print(
            f"gpu_smoke: no CUDA device (torch {torch.__version__}, cuda available: False); run this on a GPU machine",
            file=sys.stderr,
        )
        return 2
    ctx.device = torch.device("cpu") if ctx.cpu else torch.device("cuda", 0)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    ctx.outdir.mkdir(parents=True, exist_ok=True)
    report = {"environment": environment(ctx), "sections": {}}
    started = time.perf_counter()
    for name, fn in sections(ctx.cpu):
        report["sections"][name] = run_section(fn, ctx)
        print(summary_line(name, report["sections"][name]), flush=True)
        report["ok"] = all(r["ok"] for r in report["sections"].values())
        report["seconds"] = time.perf_counter() - started
        (ctx.outdir / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(
        f"gpu_smoke: {'all sections passed' if report['ok'] else 'FAILED'} in {report['seconds']:.1f} s "
        f"({report['environment']['device']}); {ctx.outdir / 'gpu_smoke.json'}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
