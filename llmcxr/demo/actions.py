"""What each demo action does, independent of the web framework (testable without a browser).

One :class:`DemoActions` wraps one loaded model. Every model call holds ``self.lock``: torch
generation on a shared module is not safe to interleave (per-request seeds set global RNG state,
and on a CPU one request already uses every core), so requests run one at a time. The web app
also queues them (one worker per model), which keeps the lock uncontended and shows users their
place in line; the lock is what guarantees it for any other caller. Uploads are decoded under the
same lock, once each: the preview, the report and the chat of one upload share the decoded image.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrcommon.files import write_png
from llmcxr.decoding import ProgressCallback, Sampling
from vqgan import CXRReadError, read_cxr

if TYPE_CHECKING:
    from llmcxr.pipeline import LLMCXR

log = logging.getLogger(__name__)


class DemoInputError(ValueError):
    """A request the demo cannot serve; the message is one line meant for the user."""


@dataclass(frozen=True)
class DemoLimits:
    """Bounds on one request, so a single user cannot hold the shared model for long."""

    max_images: int = 4
    max_text_chars: int = 2000
    max_chat_turns: int = 8
    decoded_uploads: int = 2
    """Decoded uploads kept (by content) so the preview, report and chat decode a file once."""


class DemoActions:
    """The three tasks of the demo (report, draw, ask) on one shared model."""

    def __init__(self, model: LLMCXR, output_dir: Path, limits: DemoLimits | None = None) -> None:
        self.model = model
        self.output_dir = Path(output_dir)
        self.limits = limits or DemoLimits()
        self.lock = threading.Lock()
        self._decoded: OrderedDict[str, np.ndarray] = OrderedDict()

    def load_image(self, path: str | Path | None) -> np.ndarray:
        """Read an uploaded PNG, JPEG or DICOM as float32 ``[H, W]`` in ``[0, 1]``.

        Decoded under the model lock (decoding a large file takes memory and CPU like a model
        call) and only once per file content: gradio hands the same upload to several events.
        """
        if path is None:
            raise DemoInputError("Upload a chest X-ray first (PNG, JPEG or DICOM).")
        name = Path(path).name
        try:
            key = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as err:
            raise DemoInputError(f"Cannot read {name}: {err.strerror or err}.") from err
        with self.lock:
            image = self._decoded.get(key)
            if image is None:
                try:
                    image = read_cxr(path)
                except CXRReadError as err:
                    raise DemoInputError(f"Cannot read {name}: {err.reason}.") from err
                self._decoded[key] = image
                while len(self._decoded) > self.limits.decoded_uploads:
                    self._decoded.popitem(last=False)
            self._decoded.move_to_end(key)
        return image

    def write_report(self, image: np.ndarray | None, sampling: Sampling) -> str:
        """Generate the radiology report of one image."""
        image = _require_image(image)
        with self.lock:
            (report,) = self.model.generate_report([image], **sampling.as_kwargs())
        return report

    def draw_images(
        self,
        report: str,
        num_images: int,
        sampling: Sampling,
        progress: ProgressCallback | None = None,
    ) -> list[Path]:
        """Generate ``num_images`` X-rays for a report and save them as PNG files; returns paths."""
        report = self._require_text(report, "Type a report to draw an X-ray from.")
        if int(num_images) != num_images or not 1 <= num_images <= self.limits.max_images:
            raise DemoInputError(
                f"Number of images must be 1 to {self.limits.max_images}, got {num_images}."
            )
        kwargs = sampling.as_kwargs()
        del kwargs["do_sample"]  # image tokens are always sampled (greedy decoding draws one image)
        with self.lock:
            (images,) = self.model.generate_images(
                [report], num_images=int(num_images), progress=progress, **kwargs
            )
        return self._save_pngs(images, seed=kwargs["seed"])

    def answer(
        self, image: np.ndarray | None, question: str, history: Sequence[tuple[str, str]]
    ) -> str:
        """Answer a question about the image, given the earlier turns of the conversation."""
        image = _require_image(image)
        question = self._require_text(question, "Type a question about the X-ray.")
        history = list(history)[-self.limits.max_chat_turns :]
        with self.lock:
            return self.model.ask(image, question, history)

    def _require_text(self, text: str | None, empty_message: str) -> str:
        text = (text or "").strip()
        if not text:
            raise DemoInputError(empty_message)
        if len(text) > self.limits.max_text_chars:
            raise DemoInputError(
                f"Text too long ({len(text)} characters; "
                f"the limit is {self.limits.max_text_chars})."
            )
        return text

    def _save_pngs(self, images: Sequence[np.ndarray], seed: int | None) -> list[Path]:
        folder = self.output_dir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        paths = []
        for index, image in enumerate(images, start=1):
            path = folder / f"llmcxr-seed{seed if seed is not None else 'random'}-{index}.png"
            write_png(path, image)
            paths.append(path)
        log.info("saved %d generated images to %s", len(paths), folder)
        return paths


def _require_image(image: np.ndarray | None) -> np.ndarray:
    if image is None:
        raise DemoInputError("Upload a chest X-ray first (PNG, JPEG or DICOM).")
    return image
