"""``llmcxr demo``: serve the web demo for a model folder on localhost."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def build_parser() -> argparse.ArgumentParser:
    """The ``llmcxr demo`` arguments."""
    parser = argparse.ArgumentParser(
        prog="llmcxr demo",
        description="Serve a local web demo: X-ray to report, report to X-ray, and questions.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model folder or training .ckpt (default: the embedded default model)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: the first free one from 7860)"
    )
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="most requests waiting for the model before new ones are refused",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Load the model once, then serve the demo until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        print(f"llmcxr demo: --port must be 1-65535, got {args.port}", file=sys.stderr)
        return 2
    if args.max_queue < 1:
        print(f"llmcxr demo: --max-queue must be >= 1, got {args.max_queue}", file=sys.stderr)
        return 2
    try:
        from llmcxr.demo.app import build_demo, launch_demo
    except ImportError as err:
        print(f"llmcxr demo needs gradio ({err}): pip install 'llmcxr[demo]'", file=sys.stderr)
        return 2
    from llmcxr.pipeline import LLMCXR

    try:
        model = LLMCXR.from_pretrained(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"llmcxr demo: cannot load the model: {err}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="llmcxr-demo-") as output_dir, _exit_on_sigterm():
        demo = build_demo(model, output_dir)
        try:
            launch_demo(demo, host=args.host, port=args.port, max_queue=args.max_queue, block=True)
        except OSError as err:  # port taken or address unavailable
            print(f"llmcxr demo: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
            return 1
        finally:
            demo.close()
    return 0


@contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM (service stop) into a normal exit, so the server closes and temp files go.

    The previous handler comes back afterwards; off the main thread nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
