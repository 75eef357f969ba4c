"""Import gradio for an offline, telemetry-free app.

gradio reads ``GRADIO_ANALYTICS_ENABLED`` when it is imported and again when an app launches
(version check, usage reports to its servers), so the variable is set in this process before
the first import. Nothing outside the process changes.
"""

from __future__ import annotations

import os
from types import ModuleType


def import_gradio() -> ModuleType:
    """Return the gradio module with analytics and version checks switched off."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import gradio

    return gradio


def offline_theme(gradio: ModuleType) -> object:
    """A theme on system fonts only: gradio's stock themes pull Google Fonts from the internet."""
    return gradio.themes.Base(
        primary_hue="blue",
        neutral_hue="slate",
        font=("ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"),
        font_mono=("ui-monospace", "Consolas", "DejaVu Sans Mono", "monospace"),
    )
