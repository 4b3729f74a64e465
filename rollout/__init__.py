"""Rollout: sample G outputs per prompt from the current policy, tagged with the policy version that produced them.

Engines are `hf` (transformers `generate`, the CPU default) and `vllm` (prompt embeddings on GPUs); Ray actors host them.
"""
