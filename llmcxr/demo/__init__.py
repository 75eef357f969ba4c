"""The web demo (``llmcxr demo``): report, draw and ask on one model, offline on localhost.

``main(argv)`` is the command; ``build_demo`` / ``launch_demo`` (in :mod:`llmcxr.demo.app`)
build and serve the page for a model object. gradio is imported only when the app is built.
"""

from llmcxr.demo.cli import main

__all__ = ["main"]
