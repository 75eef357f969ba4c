"""Plumbing shared by `vqgan`, `llmcxr` and `instructions`: atomic file and folder writes, the
dataset folder's image manifest, and other small helpers each package needs once.

It imports none of those packages (and no torch or Lightning at import time), so every package
may use it without crossing the layout's boundaries (docs/architecture.md).
"""
