"""The GPU window's transfer and time limits, and how much of a command the checkout already
takes."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20


@dataclass(frozen=True)
class DeviceLimits:
    """Limits of one lent GPU window (the device tool's README); tests pass smaller ones."""

    command_bytes: int = 64 * MIB
    """Files one command receives: every tracked file of the checkout plus the carried paths."""
    files_back: int = 8
    """Files that come back from ``$OUT`` after a command."""
    file_back_bytes: int = 16 * MIB
    """Size of each returned file."""
    max_carry: int = 8
    """Ignored paths one command may carry."""
    command_seconds: int = 600
    """One command's wall-clock limit."""
    window_seconds: int = 900
    """Device time of the whole window, machine start-up included."""


def checkout_bytes(project: Path) -> int:
    """Bytes of what travels with every command: tracked plus untracked-but-not-ignored files.

    Outside a git checkout every file below `project` counts (nothing is known to be ignored).
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=project,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sum(p.stat().st_size for p in project.rglob("*") if p.is_file())
    paths = (project / name for name in listed.decode().split("\0") if name)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())
