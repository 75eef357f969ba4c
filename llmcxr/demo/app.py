"""The gradio page of the demo: three tabs (report, draw, ask) over one shared model.

Layout and wiring only; what each button does lives in :mod:`llmcxr.demo.actions`. Callbacks
turn :class:`~llmcxr.demo.actions.DemoInputError` (and unexpected model failures) into
``gr.Error`` so the page shows one clear line and the app keeps serving other requests.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from cxrcommon.files import to_uint8
from llmcxr.demo.actions import DemoActions, DemoInputError, DemoLimits, Sampling
from llmcxr.demo.findings import highlight_findings, label_rows
from llmcxr.demo.offline_gradio import import_gradio, offline_theme

if TYPE_CHECKING:
    from llmcxr.pipeline import LLMCXR

gr = import_gradio()
log = logging.getLogger(__name__)

MODEL_QUEUE = "llmcxr-model"
"""Concurrency id of every event that runs the model: one worker, one request at a time."""

MAX_UPLOAD = "100mb"
"""Largest accepted upload: room for an uncompressed 16-bit DICOM, not for abuse."""

EXAMPLE_REPORTS = [
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Large right pleural effusion with adjacent atelectasis. Moderate cardiomegaly.",
    "Diffuse bilateral airspace opacities consistent with pulmonary edema.",
]

_F = TypeVar("_F", bound=Callable[..., Any])


def shows_errors(callback: _F) -> _F:
    """Report a callback's failure in the page (``gr.Error``) instead of a generic "Error"."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except DemoInputError as err:
            raise gr.Error(str(err), print_exception=False) from err
        except gr.Error:
            raise
        except ValueError as err:
            # The model refused this input (e.g. a prompt longer than its context).
            log.warning("demo request rejected: %s", err)
            raise gr.Error(f"The model cannot take this request: {err}") from err
        except Exception as err:  # any model failure must reach the page, not kill the app
            log.exception("demo request failed")
            raise gr.Error(
                f"The model failed on this request: {type(err).__name__}: {err}"
            ) from err

    return wrapper  # type: ignore[return-value]


class DemoCallbacks:
    """Event handlers of the page: gradio values in, gradio values out."""

    def __init__(self, actions: DemoActions) -> None:
        self.actions = actions

    @shows_errors
    def preview(self, path: str | None) -> np.ndarray | None:
        """Show an uploaded X-ray (or clear the preview when the upload is removed)."""
        if path is None:
            return None
        return to_uint8(self.actions.load_image(path))

    @shows_errors
    def report(
        self,
        path: str | None,
        do_sample: bool,
        temperature: float,
        top_p: float,
        seed: float | None,
    ) -> tuple[Any, list[list[str]], str]:
        """Report of the uploaded X-ray: highlighted sentences, label table, plain text."""
        sampling = Sampling(bool(do_sample), float(temperature), float(top_p), _seed(seed))
        image = self.actions.load_image(path)
        text = self.actions.write_report(image, sampling)
        spans, colours = highlight_findings(text)
        return gr.HighlightedText(value=spans, color_map=colours), label_rows(text), text

    @shows_errors
    def draw(
        self,
        report: str,
        num_images: float,
        temperature: float,
        top_p: float,
        seed: float | None,
        progress: Any = gr.Progress(),  # noqa: B008 - gradio finds the progress bar by this default
    ) -> tuple[list[str], list[str]]:
        """Draw X-rays for a report, showing the image-token count as progress."""
        sampling = Sampling(True, float(temperature), float(top_p), _seed(seed))

        def on_tokens(done: int, total: int) -> None:
            progress((done, total), desc="Drawing: image tokens", unit="tokens")

        paths = self.actions.draw_images(report, int(num_images), sampling, on_tokens)
        files = [str(path) for path in paths]
        return files, files

    @shows_errors
    def ask(
        self, path: str | None, question: str, turns: Sequence[tuple[str, str]] | None
    ) -> tuple[list[dict[str, str]], list[tuple[str, str]], str]:
        """One chat turn about the uploaded X-ray: (chat messages, turns, cleared question box)."""
        image = self.actions.load_image(path)
        turns = [tuple(turn) for turn in (turns or [])]
        answer = self.actions.answer(image, question, turns)
        turns = [*turns, (question.strip(), answer)]
        return chat_messages(turns), turns, ""

    @staticmethod
    def new_chat(_path: str | None = None) -> tuple[list[dict[str, str]], list[tuple[str, str]]]:
        """An empty conversation (a new image starts a new chat)."""
        return [], []


def chat_messages(turns: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """Question/answer turns as the chat component's role/content messages."""
    messages: list[dict[str, str]] = []
    for question, answer in turns:
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    return messages


def _seed(value: float | None) -> int | None:
    if value is None:
        return None
    if float(value) != int(value):
        raise DemoInputError(f"Seed must be a whole number >= 0, got {value}.")
    return int(value)


def _upload_with_preview(elem_id: str) -> tuple[Any, Any]:
    """An upload box for a CXR file and the image it shows once read."""
    upload = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", elem_id=elem_id)
    preview = gr.Image(
        label="X-ray",
        type="numpy",
        format="png",
        interactive=False,
        height=320,
        buttons=["download", "fullscreen"],  # no "share": it uploads to Hugging Face
    )
    return upload, preview


def _sampling_controls(temperature: float, top_p: float) -> tuple[Any, Any, Any]:
    """Temperature, top-p and seed inputs (defaults: the model's, seed 0)."""
    temperature = gr.Slider(0.1, 2.0, value=temperature, step=0.05, label="Temperature")
    top_p = gr.Slider(0.05, 1.0, value=top_p, step=0.01, label="Top-p")
    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
    return temperature, top_p, seed


def build_demo(
    model: LLMCXR,
    output_dir: str | Path,
    *,
    limits: DemoLimits | None = None,
    title: str = "LLM-CXR",
) -> Any:
    """Build (not launch) the demo page for ``model``; generated PNGs go under ``output_dir``."""
    limits = limits or DemoLimits()
    defaults = model.generation_defaults
    callbacks = DemoCallbacks(DemoActions(model, Path(output_dir), limits))
    model_event = {"concurrency_limit": 1, "concurrency_id": MODEL_QUEUE}
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"# {title}\nOne language model that reads and draws chest X-rays. "
            "Research demo, not for clinical use."
        )
        with gr.Tabs():
            with gr.Tab("Report", id="report"), gr.Row():
                with gr.Column(scale=1):
                    report_file, report_preview = _upload_with_preview("report-upload")
                    with gr.Accordion("Sampling", open=False):
                        report_sample = gr.Checkbox(value=True, label="Sample (off: greedy)")
                        report_sampling = _sampling_controls(
                            defaults.temperature_for_reports, defaults.top_p
                        )
                    report_button = gr.Button(
                        "Write report", variant="primary", elem_id="report-button"
                    )
                with gr.Column(scale=1):
                    report_highlight = gr.HighlightedText(
                        label="Report with findings", elem_id="report-highlight"
                    )
                    report_labels = gr.Dataframe(
                        headers=["Finding", "Status"], label="Labels", interactive=False
                    )
                    report_text = gr.Textbox(
                        label="Report text", lines=4, elem_id="report-text", buttons=["copy"]
                    )
            with gr.Tab("Draw", id="draw"), gr.Row():
                with gr.Column(scale=1):
                    draw_report = gr.Textbox(
                        label="Report",
                        lines=5,
                        elem_id="draw-report",
                        placeholder="Describe the X-ray to draw",
                    )
                    gr.Examples(EXAMPLE_REPORTS, inputs=[draw_report])
                    draw_count = gr.Slider(
                        1, limits.max_images, value=1, step=1, label="Number of images"
                    )
                    draw_sampling = _sampling_controls(defaults.temperature, defaults.top_p)
                    draw_button = gr.Button("Draw", variant="primary", elem_id="draw-button")
                with gr.Column(scale=1):
                    draw_gallery = gr.Gallery(
                        label="Generated X-rays",
                        format="png",
                        columns=2,
                        buttons=["download", "fullscreen"],
                        elem_id="draw-gallery",
                    )
                    draw_files = gr.File(
                        label="Download PNG", file_count="multiple", interactive=False
                    )
            with gr.Tab("Ask", id="ask"), gr.Row():
                with gr.Column(scale=1):
                    ask_file, ask_preview = _upload_with_preview("ask-upload")
                with gr.Column(scale=1):
                    chat = gr.Chatbot(
                        label="Questions about this X-ray",
                        height=360,
                        elem_id="ask-chat",
                        buttons=["copy", "copy_all"],
                        feedback_options=None,
                    )
                    turns = gr.State([])
                    question = gr.Textbox(
                        label="Question",
                        elem_id="ask-question",
                        placeholder="Is there a pleural effusion?",
                    )
                    with gr.Row():
                        ask_button = gr.Button("Ask", variant="primary", elem_id="ask-button")
                        clear_button = gr.Button("New chat")

        report_file.change(callbacks.preview, report_file, report_preview, api_name=False)
        report_file.change(lambda path: path, report_file, ask_file, api_name=False)
        report_button.click(
            callbacks.report,
            [report_file, report_sample, *report_sampling],
            [report_highlight, report_labels, report_text],
            api_name="report",
            **model_event,
        )
        draw_button.click(
            callbacks.draw,
            [draw_report, draw_count, *draw_sampling],
            [draw_gallery, draw_files],
            api_name="draw",
            **model_event,
        )
        ask_file.change(callbacks.preview, ask_file, ask_preview, api_name=False)
        ask_file.change(callbacks.new_chat, ask_file, [chat, turns], api_name=False)
        ask_io = ([ask_file, question, turns], [chat, turns, question])
        ask_button.click(callbacks.ask, *ask_io, api_name="ask", **model_event)
        question.submit(callbacks.ask, *ask_io, api_name=False, **model_event)
        clear_button.click(callbacks.new_chat, None, [chat, turns], api_name=False)
        chat.clear(callbacks.new_chat, None, [chat, turns], api_name=False)
    return demo


def launch_demo(
    demo: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_queue: int = 64,
    auth: tuple[str, str] | None = None,
    block: bool = True,
) -> str:
    """Queue and serve ``demo`` on ``host:port`` (no share link, no SSR server); returns its URL.

    ``auth`` (user, password) puts gradio's login page in front of the demo.
    ``max_queue`` bounds waiting requests (more are refused with a "queue full" message);
    ``block=False`` returns once the server is up (tests, benchmarks). ``port=None`` takes the
    first free port from 7860 on (gradio's own search).
    """
    demo.queue(default_concurrency_limit=4, max_size=max_queue)
    _, local_url, _ = demo.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        share=False,
        max_file_size=MAX_UPLOAD,
        inbrowser=False,
        prevent_thread_lock=not block,
        ssr_mode=False,
        mcp_server=False,
        quiet=not block,
        theme=offline_theme(gr),
        footer_links=["api", "settings"],
    )
    return local_url
