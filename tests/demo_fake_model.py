"""A stand-in for ``llmcxr.pipeline.LLMCXR`` with the same call signatures, for demo unit tests.

It answers instantly and deterministically from its inputs, records its calls, and can be told
to fail, so tests check the demo's wiring and error handling without a language model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llmcxr.model_folder import GenerationDefaults


class FakeLLMCXR:
    """Deterministic fake: reports mention the image's mean brightness; images encode the seed."""

    def __init__(
        self,
        image_size: int = 32,
        tokens_per_image: int = 16,
        fail: bool = False,
        generation_defaults: GenerationDefaults | None = None,
    ) -> None:
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self.image_size = image_size
        self.tokens_per_image = tokens_per_image
        self.fail = fail
        self.calls: list[tuple[str, dict]] = []

    def _check(self) -> None:
        if self.fail:
            raise RuntimeError("fake model failure")

    def generate_report(self, images: Sequence[np.ndarray], **generation) -> list[str]:
        self.calls.append(("report", generation))
        self._check()
        return [
            f"Mean brightness {float(np.mean(image)):.3f}. Small left pleural effusion. "
            "No pneumothorax."
            for image in images
        ]

    def generate_images(
        self,
        reports: Sequence[str],
        *,
        num_images: int = 1,
        seed: int | None = None,
        progress: Callable[[int, int], None] | None = None,
        **generation,
    ) -> list[list[np.ndarray]]:
        self.calls.append(("images", {"num_images": num_images, "seed": seed, **generation}))
        self._check()
        total = len(reports) * num_images * self.tokens_per_image
        rng = np.random.default_rng(seed)
        out = []
        for _ in reports:
            out.append(
                [
                    rng.random((self.image_size, self.image_size), dtype=np.float32)
                    for _ in range(num_images)
                ]
            )
        if progress is not None:
            for done in range(0, total + 1, self.tokens_per_image):
                progress(done, total)
        return out

    def ask(
        self,
        image: np.ndarray,
        question: str,
        history: Sequence[tuple[str, str]] = (),
        **generation,
    ) -> str:
        self.calls.append(("ask", {"question": question, "history": list(history)}))
        self._check()
        return f"Answer {len(history) + 1} to: {question}"
