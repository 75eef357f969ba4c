"""Draw ``docs/samples.png``: a grid of images a model draws from test-split reports.

Rows are reports (seeded pick of the split's report->CXR records, one per finding group);
columns: N drawings, at the tokenizer's resolution. ``--with-real`` adds the real test image each
report was paired with and its tokenizer reconstruction (the ceiling) in front: for looking at
locally, not for committing (the real images come from the datasets, which stay out of the
repository).

    python scripts/sample_grid.py --data runs/default_model/data --out docs/samples.png
"""

from __future__ import annotations

import argparse
import random
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from llmcxr.evaluation.data import EvalSplit
from llmcxr.evaluation.image_task import read_real, reconstruct
from llmcxr.pipeline import LLMCXR

CELL = 128
TEXT_WIDTH = 300


def _tile(image: np.ndarray) -> Image.Image:
    pixels = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((CELL, CELL), Image.Resampling.BICUBIC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", default=None, help="model folder (default: the embedded one)")
    parser.add_argument("--out", type=Path, default=Path("docs/samples.png"))
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--drawings", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--with-real",
        action="store_true",
        help="also show each report's real test image and its reconstruction (do not commit)",
    )
    args = parser.parse_args(argv)
    llm = LLMCXR.from_pretrained(args.model, device="cpu")
    size = llm.image_tokenizer.image_size
    records = EvalSplit(args.data, 2, "test").records("report_to_cxr", need_image=True)
    by_report: dict[str, object] = {}
    for record in random.Random(args.seed).sample(records, len(records)):
        by_report.setdefault(record.report.strip().lower()[:60], record)
    picked = list(by_report.values())[: args.rows]
    references = ["real (test)", "tokenizer"] if args.with_real else []
    width = TEXT_WIDTH + CELL * (len(references) + args.drawings)
    sheet = Image.new("L", (width, 20 + CELL * len(picked)), 255)
    draw = ImageDraw.Draw(sheet)
    header = references + [f"drawn {k + 1}" for k in range(args.drawings)]
    for k, name in enumerate(header):
        draw.text((TEXT_WIDTH + k * CELL + 4, 4), name, fill=0)
    drawings = llm.generate_images(
        [r.report for r in picked], num_images=args.drawings, seed=args.seed
    )
    for row, (record, drawn) in enumerate(zip(picked, drawings)):
        top = 20 + row * CELL
        shown = list(drawn)
        if args.with_real:
            real = read_real(record, size)
            shown = [real, reconstruct(llm.image_tokenizer, [real])[0][0], *shown]
        caption = "\n".join(textwrap.wrap(record.report, 44)[:8])
        draw.multiline_text((4, top + 4), caption, fill=0)
        for k, image in enumerate(shown):
            sheet.paste(_tile(image), (TEXT_WIDTH + k * CELL, top))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
