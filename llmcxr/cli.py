"""The `llmcxr` command: report, generate-image, ask, chat, and the data / evaluate / demo jobs.

Heavy imports (torch, transformers, the model) happen inside the handlers so `llmcxr --help`
answers at once. Expected failures (a missing model, an unreadable image, an empty or over-long
prompt) print one line on stderr and exit non-zero; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from llmcxr.pipeline import LLMCXR

logger = logging.getLogger(__name__)

PROG = "llmcxr"
IMAGE_COLUMNS = ("image", "path", "image_path", "file")
"""CSV columns accepted as the image path column, first match wins."""


class CommandUnavailableError(ValueError):
    """A job whose module (or one of its optional dependencies) is not installed."""

    def __init__(self, command: str, err: ModuleNotFoundError) -> None:
        super().__init__(f"`{PROG} {command}` is not available here: module {err.name!r} is missing")


# ----------------------------------------------------------------------------- dispatching jobs
def _run_data(argv: list[str]) -> int:
    """`llmcxr data build ...` / `llmcxr data tokenize ...`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} data {{build,tokenize}} ...\n\n"
              "  build     build an instruction dataset (instructions' build command)\n"
              "  tokenize  tokenise a built dataset's images once into the token cache")
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job == "build":
        try:
            from instructions.cli import main as build_main
        except ModuleNotFoundError as err:
            raise CommandUnavailableError("data build", err) from err
        return build_main(rest) or 0
    if job == "tokenize":
        from llmcxr.token_cache import main as tokenize_main

        return tokenize_main(rest) or 0
    raise ValueError(f"unknown data command {job!r}: use build or tokenize")


def _run_evaluate(argv: list[str]) -> int:
    try:
        from llmcxr.evaluation.cli import main as evaluate_main
    except ModuleNotFoundError as err:
        raise CommandUnavailableError("evaluate", err) from err
    return evaluate_main(argv) or 0


def _run_demo(argv: list[str]) -> int:
    try:
        from llmcxr.demo import main as demo_main
    except ModuleNotFoundError as err:
        raise CommandUnavailableError("demo", err) from err
    return demo_main(argv) or 0


PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "data": (_run_data, "build an instruction dataset or its image token cache (data build|tokenize ...)"),
    "evaluate": (_run_evaluate, "evaluate a model on a built dataset (see llmcxr evaluate --help)"),
    "demo": (_run_demo, "start the local web demo (see llmcxr demo --help)"),
}


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the model commands (jobs in PASSTHROUGH parse their own)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="LLM-CXR: read chest X-rays into reports, draw them from reports, answer questions.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None,
                       help="model folder or training .ckpt (default: the embedded model, llmcxr/default_model)")
    model.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps")
    model.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    model.add_argument("--seed", type=int, default=None, help="random seed for sampling")

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: model's, 0.92)")
    sampling.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: model's)")

    text = argparse.ArgumentParser(add_help=False)
    text.add_argument("--max-new-tokens", type=int, default=None, help="answer length limit (default: model's)")
    text.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")

    gen = sub.add_parser("generate-image", parents=[model, sampling], help="draw chest X-rays from a report")
    gen.add_argument("report", help="the report text to draw")
    gen.add_argument("-o", "--output", required=True, help="PNG path; with --num-images K: NAME_0.png ...")
    gen.add_argument("--num-images", type=int, default=1, help="images to draw (batched)")
    gen.add_argument("--guidance-scale", type=float, default=None,
                     help="classifier-free guidance scale (1 = off, the default)")
    gen.add_argument("--batch-size", type=int, default=8)

    rep = sub.add_parser("report", parents=[model, sampling, text],
                         help="write reports for images (file, folder or CSV)")
    rep.add_argument("input", help="PNG, JPEG or DICOM file, a folder of them, or a CSV with an image/path column")
    rep.add_argument("-o", "--output", default=None, help="write rows to a .csv or .jsonl file instead of stdout")
    rep.add_argument("--json", action="store_true", help="JSON output with the report's finding labels")
    rep.add_argument("--batch-size", type=int, default=8)

    ask = sub.add_parser("ask", parents=[model, sampling, text], help="answer one question about an image")
    ask.add_argument("image")
    ask.add_argument("question")

    chat = sub.add_parser("chat", parents=[model, sampling, text], help="multi-turn questions about an image (stdin)")
    chat.add_argument("image")

    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


# ----------------------------------------------------------------------------- commands
def _load(args: argparse.Namespace) -> LLMCXR:
    from transformers.utils import logging as hf_logging

    from llmcxr.pipeline import LLMCXR

    if not args.debug:
        hf_logging.disable_progress_bar()  # the CLI owns this process: keep stderr to our own lines
    return LLMCXR.from_pretrained(args.model, device=args.device, dtype=args.dtype)


def _cmd_generate_image(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    if not args.report.strip():
        raise ValueError("the report to draw is empty")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must be a .png file, got {output}")
    llm = _load(args)
    with tqdm(total=args.num_images * llm.token_map.tokens_per_image, unit="tok", desc="drawing",
              disable=None) as bar:
        def advance(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        images = llm.generate_images(
            [args.report], num_images=args.num_images, seed=args.seed, temperature=args.temperature,
            top_p=args.top_p, guidance_scale=args.guidance_scale, batch_size=args.batch_size, progress=advance,
        )[0]
    paths = image_output_paths(output, len(images))
    for image, path in zip(images, paths):
        write_png(image, path)
        print(path)
    return 0


def image_output_paths(output: Path, count: int) -> list[Path]:
    """`out.png` for one image, `out_0.png`, `out_1.png` ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def write_png(image: np.ndarray, path: Path) -> None:
    """Save a [H, W] array in [0, 1] as an 8-bit grayscale PNG (written to a temp file, then renamed)."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def list_images(source: str | Path) -> list[Path]:
    """The images named by `source`: one file, every image file under a folder, or a CSV's
    image/path column (relative paths are relative to the CSV's folder)."""
    from vqgan.image_io import IMAGE_SUFFIXES

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{source}: no PNG, JPEG or DICOM files in this folder")
        return images
    if source.suffix.lower() == ".csv":
        return _csv_images(source)
    return [source]


def _csv_images(path: Path) -> list[Path]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        column = next((c for c in IMAGE_COLUMNS if c in (reader.fieldnames or [])), None)
        if column is None:
            raise ValueError(f"{path}: needs a column named one of {', '.join(IMAGE_COLUMNS)}")
        values = [row[column].strip() for row in reader if row[column] and row[column].strip()]
    if not values:
        raise ValueError(f"{path}: the {column} column is empty")
    return [Path(v) if Path(v).is_absolute() else path.parent / v for v in values]


def _cmd_report(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    images = list_images(args.input)
    single = len(images) == 1 and Path(args.input).is_file() and Path(args.input).suffix.lower() != ".csv"
    if single:
        _read(images[0])  # an unreadable single file is an error before the model loads
    llm = _load(args)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(images), unit="img", desc="reporting", disable=True if single else None) as bar:
        for batch in _batches(images, args.batch_size):
            rows += _report_batch(llm, batch, args)
            bar.update(len(batch))
    failed = sum(1 for row in rows if row.get("error"))
    if args.output:
        write_rows(rows, Path(args.output))
        print(f"wrote {len(rows)} rows to {args.output}" + (f" ({failed} failed)" if failed else ""))
    elif single and not args.json:
        print(rows[0]["report"])
    else:
        for row in rows:
            print(json.dumps(row) if args.json or len(rows) > 1 else row["report"])
    if failed:
        print(f"{PROG}: {failed} of {len(rows)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def _read(path: Path) -> np.ndarray:
    from vqgan import read_cxr

    return read_cxr(path)


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _report_batch(llm: LLMCXR, paths: Sequence[Path], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Reports for one batch; an unreadable image gets a row with its error, not a crash."""
    from vqgan import CXRReadError

    rows: list[dict[str, Any]] = []
    arrays = []
    for path in paths:
        try:
            arrays.append(_read(path))
            rows.append({"image": str(path)})
        except CXRReadError as err:
            logger.warning("%s", err)
            rows.append({"image": str(path), "report": "", "error": str(err)})
    ok = [row for row in rows if "error" not in row]
    if arrays:
        reports = llm.generate_report(
            arrays, max_new_tokens=args.max_new_tokens, do_sample=False if args.greedy else None,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
        )
        for row, report in zip(ok, reports):
            row["report"] = report
            if args.json:
                from instructions import label_report

                row["labels"] = label_report(report)
    return rows


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Write report rows as .csv (labels as a JSON string) or .jsonl, atomically."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        raise ValueError(f"--output must end in .csv or .jsonl, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            if suffix == ".jsonl":
                handle.writelines(json.dumps(row) + "\n" for row in rows)
            else:
                fields = ["image", "report", *(["labels"] if any("labels" in r for r in rows) else []), "error"]
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                for row in rows:
                    writer.writerow({**row, **({"labels": json.dumps(row["labels"])} if "labels" in row else {})})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _text_generation(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_new_tokens": args.max_new_tokens, "do_sample": False if args.greedy else None,
            "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}


def _cmd_ask(args: argparse.Namespace) -> int:
    if not args.question.strip():
        raise ValueError("the question is empty")
    image = _read(Path(args.image))
    llm = _load(args)
    print(llm.ask(image, args.question, **_text_generation(args)))
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    """A REPL on stdin: each line is a question; earlier turns stay in the prompt. EOF ends it."""
    from llmcxr.pipeline import PromptTooLongError

    image = _read(Path(args.image))
    llm = _load(args)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chatting about {args.image}. Ask a question; /reset forgets the conversation; Ctrl-D quits.")
    history: list[tuple[str, str]] = []
    generation = _text_generation(args)
    while True:
        try:
            question = input("> " if interactive else "").strip()
        except EOFError:
            if interactive:
                print()
            return 0
        if not question:
            continue
        if question == "/reset":
            history.clear()
            continue
        try:
            answer = llm.ask(image, question, history, **generation)
        except PromptTooLongError:
            print(f"{PROG}: the conversation no longer fits the context; it was reset", file=sys.stderr)
            history.clear()
            answer = llm.ask(image, question, history, **generation)
        history.append((question, answer))
        print(answer, flush=True)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate-image": _cmd_generate_image,
    "report": _cmd_report,
    "ask": _cmd_ask,
    "chat": _cmd_chat,
}


# ----------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one `llmcxr` command; returns the exit status (0 ok, 1 failed, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: _command_index(argv)]
    if not debug:
        # peft asks transformers a deprecated question on every adapter load; not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        index = _command_index(argv)
        if index < len(argv) and argv[index] in PASSTHROUGH:
            return PASSTHROUGH[argv[index]][0](argv[index + 1 :])
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2, message already shown)
        return exit_.code if isinstance(exit_.code, int) else 1
    except (FileNotFoundError, ValueError) as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 1


def _command_index(argv: Sequence[str]) -> int:
    """Position of the first non-option word (the command)."""
    return next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))


def _one_line(err: BaseException) -> str:
    return " ".join((str(err).strip() or type(err).__name__).split())
