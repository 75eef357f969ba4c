"""``python -m llmcxr.gpu_kit pack|receive|drive|unpack|dry-run`` (see ``docs/gpu_training.md``).

``receive`` and ``drive`` run on the GPU machine before any wheel is installed, so each
subcommand imports only what it needs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from llmcxr.gpu_kit.limits import MIB


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llmcxr.gpu_kit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pack", help="build the bundle (CPU)")
    p.add_argument("--dataset", type=Path, required=True, help="built instruction dataset")
    p.add_argument("--bundle", type=Path, default=Path("gpu_bundle"))
    p.add_argument("--profile", default="gpu", choices=("gpu", "dryrun"))
    p.add_argument("--image-tokenizer", type=Path, default=None, help="tokenizer of the cache")
    p.add_argument("--wheels", type=Path, default=None, help="folder of wheels to carry")
    p.add_argument("--fetch-wheels", action="store_true", help="download them into --wheels")
    p.add_argument("--images", type=Path, nargs="*", default=[], help="labelled sources")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--jpeg-quality", type=int, default=80)
    p.add_argument("--limit-per-source", type=int, default=None)
    p.add_argument("--part-mib", type=float, default=None, help="part size (default: the most)")
    p.add_argument("--budget", type=int, default=540, help="seconds the driver may take")
    p.add_argument(
        "--continue-from",
        type=Path,
        default=None,
        help="model folder the LLM lane continues (one phase) instead of training from the base",
    )

    r = sub.add_parser("receive", help="check one arrived part (GPU machine)")
    r.add_argument("--bundle", type=Path, default=Path("gpu_bundle"))
    r.add_argument("--part", type=int, required=True)

    d = sub.add_parser("drive", help="train on the GPU machine")
    d.add_argument("--bundle", type=Path, default=Path("gpu_bundle"))
    d.add_argument("--out", type=Path, required=True, help="the folder $OUT names")
    d.add_argument("--work", type=Path, default=None, help="default: BUNDLE/work")
    d.add_argument("--budget", type=float, default=540.0, help="seconds for everything")
    d.add_argument("--lanes", default="llm,image", help="comma list of llm, image")
    d.add_argument("--serial", action="store_true", help="run the lanes one after the other")

    u = sub.add_parser("unpack", help="turn returned files into a model folder (CPU)")
    u.add_argument("returned", type=Path, help="folder holding the files $OUT returned")
    u.add_argument("--bundle", type=Path, default=Path("gpu_bundle"))
    u.add_argument("--out", type=Path, default=Path("runs/gpu/latest"))
    u.add_argument("--install-default", action="store_true", help="replace llmcxr/default_model")

    t = sub.add_parser("dry-run", help="pack -> drive -> unpack on this CPU with tiny budgets")
    t.add_argument("--work", type=Path, required=True, help="scratch folder")
    t.add_argument("--wheels", type=Path, default=None, help="wheels to carry and install")
    t.add_argument("--machine-python", default=None, help="python of the simulated machine")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors are one line naming the path."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return _run(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "receive":
        from llmcxr.gpu_kit.parts import check_part, parts_of, read_manifest

        parts = parts_of(read_manifest(args.bundle))
        part = next((p for p in parts if p.index == args.part), None)
        if part is None:
            raise ValueError(f"{args.bundle}: the manifest has no part {args.part}")
        check_part(args.bundle, part, len(parts))
        print(f"part {part.index} of {len(parts)} arrived intact ({part.bytes / MIB:.1f} MiB)")
        return 0
    if args.command == "drive":
        from llmcxr.gpu_kit.driver import drive

        lanes = tuple(x for x in args.lanes.split(",") if x)
        return drive(
            args.bundle, args.out, args.work, args.budget, lanes=lanes, parallel=not args.serial
        )
    if args.command == "pack":
        from llmcxr.gpu_kit.pack import fetch_wheels, pack

        if args.fetch_wheels:
            fetch_wheels(args.wheels or args.bundle / "wheels")
        plan = pack(
            args.dataset,
            args.bundle,
            profile=args.profile,
            image_tokenizer=args.image_tokenizer,
            wheels=args.wheels or (args.bundle / "wheels" if args.fetch_wheels else None),
            images=args.images,
            image_size=args.image_size,
            jpeg_quality=args.jpeg_quality,
            limit_per_source=args.limit_per_source,
            part_bytes=int(args.part_mib * MIB) if args.part_mib else None,
            budget=args.budget,
            continue_from=args.continue_from,
        )
        print((args.bundle / "COMMANDS.md").read_text())
        return 0 if plan["commands"] else 1
    if args.command == "unpack":
        from llmcxr.gpu_kit.unpack import unpack

        done = unpack(args.returned, args.bundle, args.out, args.install_default)
        print(
            json.dumps(
                {
                    "model": str(done.model),
                    "stage": done.model_stage,
                    "folders": {k: str(v) for k, v in done.folders.items()},
                    "phases": {
                        k: v.get("status") for k, v in done.report.get("phases", {}).items()
                    },
                },
                indent=2,
            )
        )
        return 0 if done.model else 1
    from llmcxr.gpu_kit.dry_run import dry_run

    done = dry_run(args.work, wheels=args.wheels, machine_python=args.machine_python)
    print(
        json.dumps(
            {
                "model": str(done.model),
                "returned": [p.name for p in done.returned],
                "phases": {k: v["status"] for k, v in done.report["phases"].items()},
                "report": done.report_text,
                "image": str(done.image),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
