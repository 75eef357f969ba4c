"""Export a ``fit`` checkpoint as a tokenizer folder: ``python -m vqgan.export CKPT OUT [--fp16]``.

The folder (config.json + model.safetensors) is what ``CXRTokenizer.from_pretrained`` and the
LLM side load; ``--fp16`` halves it for shipping (weights are cast back to fp32 on load).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from vqgan.tokenizer import CXRTokenizer


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, load the checkpoint, write the folder and print its fingerprint."""
    parser = argparse.ArgumentParser(
        prog="python -m vqgan.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "checkpoint", help="Lightning .ckpt from `python -m vqgan fit` (or a tokenizer folder)"
    )
    parser.add_argument("output", help="folder to write config.json and model.safetensors into")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    args = parser.parse_args(argv)
    tokenizer = CXRTokenizer.from_pretrained(args.checkpoint)
    out = tokenizer.save_pretrained(
        args.output, dtype=torch.float16 if args.fp16 else torch.float32
    )
    exported = CXRTokenizer.from_pretrained(out)
    size_mb = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(
        f"wrote {out} ({size_mb:.1f} MiB, {tokenizer.tokens_per_image} tokens/image, "
        f"{tokenizer.codebook_size} codes, fingerprint {exported.fingerprint})"
    )


if __name__ == "__main__":
    main()
