"""Export a ``fit`` checkpoint as a tokenizer folder (config.json + model.safetensors).

``llmcxr export tokenizer --checkpoint CKPT --out FOLDER [--dtype float16]`` is the command;
``python -m vqgan.export CKPT OUT [--fp16]`` stays as its alias. The folder is what
``CXRTokenizer.from_pretrained`` and the LLM side load; ``float16`` halves it for shipping
(weights are cast back to fp32 on load).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cxrcommon.dtypes import torch_dtype
from vqgan.tokenizer import CXRTokenizer


def export_tokenizer(checkpoint: str | Path, out: str | Path, dtype: str = "float32") -> str:
    """Load a checkpoint (or tokenizer folder), write the folder ``out`` with weights stored as
    ``dtype`` (a torch floating-point dtype name), and return the one-line summary both commands
    print (size, fingerprint)."""
    tokenizer = CXRTokenizer.from_pretrained(checkpoint)
    folder = tokenizer.save_pretrained(out, dtype=torch_dtype(dtype))
    exported = CXRTokenizer.from_pretrained(folder)
    size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
    return (
        f"wrote {folder} ({size_mb:.1f} MiB, {tokenizer.tokens_per_image} tokens/image, "
        f"{tokenizer.codebook_size} codes, fingerprint {exported.fingerprint})"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m vqgan.export CKPT OUT [--fp16]``: the positional alias of
    ``llmcxr export tokenizer``; bad input exits 2 with one error line."""
    parser = argparse.ArgumentParser(
        prog="python -m vqgan.export",
        description="Export a tokenizer checkpoint (alias of `llmcxr export tokenizer`).",
    )
    parser.add_argument(
        "checkpoint", help="Lightning .ckpt from `llmcxr train tokenizer` (or a tokenizer folder)"
    )
    parser.add_argument("output", help="folder to write config.json and model.safetensors into")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    args = parser.parse_args(argv)
    try:
        print(export_tokenizer(args.checkpoint, args.output, "float16" if args.fp16 else "float32"))
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
