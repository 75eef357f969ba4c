"""Atomic writes: a file or folder appears whole or not at all, with the user's umask.

Why by hand: ``tempfile`` gives private (0600 / 0700) temporaries and no library we use offers an
atomic replace-on-success that also keeps the permissions a plain ``open()`` would give.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``target``, then ``os.replace`` it into place.

    The temporary file sits in the target's folder, so the final rename never crosses
    filesystems; it is removed if ``write`` fails, and the old ``target`` stays untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
    )
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically (`atomic_write`)."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def new_folder_beside(target: str | Path, label: str = "new") -> Path:
    """A fresh empty folder next to ``target`` (same filesystem), with the umask's mode
    (``mkdtemp`` makes folders private)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{label}.", dir=target.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def replace_folders(staged: dict[Path, Path]) -> None:
    """Move each finished staging folder onto its target. Old targets are moved aside and
    deleted only after every new one is in place, so a failure never leaves a target missing."""
    old = []
    for target, staging in staged.items():
        if target.exists():
            old.append(new_folder_beside(target, "old"))
            os.replace(target, old[-1] / target.name)
        os.replace(staging, target)
    for folder in old:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` to write into: it replaces ``target`` when the block
    ends without an error and is removed otherwise, so ``target`` is whole or absent. File modes
    come from the umask (safetensors, like ``mkstemp``, writes files 0600)."""
    target = Path(target)
    tmp = new_folder_beside(target)
    try:
        yield tmp
        file_mode = 0o666 & ~current_umask()
        for file in tmp.rglob("*"):
            if file.is_file():
                file.chmod(file_mode)
        replace_folders({target: tmp})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def to_uint8(image: object) -> np.ndarray:
    """A float image in ``[0, 1]`` (``[H, W]``, or with size-1 axes) as 8-bit gray; values outside
    the range are clipped."""
    import numpy as np

    array = np.asarray(image, dtype=np.float32).squeeze()
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {array.shape}")
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def write_png(path: str | Path, image: object) -> Path:
    """Save a float image in ``[0, 1]`` (see `to_uint8`) as an 8-bit grayscale PNG, atomically."""
    from PIL import Image

    gray = to_uint8(image)
    return atomic_write(path, lambda tmp: Image.fromarray(gray, mode="L").save(tmp, format="PNG"))
