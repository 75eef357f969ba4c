"""``$OUT`` under the GPU window's return limits: few files, each below a size cap (stdlib only).

Results are written the moment they exist, so a later failure or a kill at the command's time
limit still returns them. A folder travels as one ``.tar.gz``; a file over the size cap travels
as ``NAME.part<i>-of-<n>`` pieces that `collect` joins again. A newer result can replace an older
one (stage 2's model replaces stage 1's) so the file count stays within the limit.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from llmcxr.gpu_kit.limits import DeviceLimits
from llmcxr.gpu_kit.parts import CHUNK

_PIECE = re.compile(r"^(?P<name>.+)\.part(?P<index>\d+)-of-(?P<total>\d+)$")
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class OutBoxFull(RuntimeError):
    """Writing a result would pass the number of files that come back."""


def tar_folder(folder: Path, target: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Write `folder` as a gzip tar whose members sit under ``folder.name``; `exclude` lists
    top-level entries of `folder` to leave out."""
    with tarfile.open(target, "w:gz", compresslevel=1) as archive:
        for entry in sorted(folder.iterdir()):
            if entry.name not in exclude:
                archive.add(entry, arcname=f"{folder.name}/{entry.name}")
    return target


class OutBox:
    """The ``$OUT`` folder of one command, holding named results within `limits`."""

    def __init__(self, folder: Path, limits: DeviceLimits | None = None) -> None:
        self.folder = folder
        self.limits = limits or DeviceLimits()
        folder.mkdir(parents=True, exist_ok=True)

    def files(self) -> list[Path]:
        """Every file now under the folder."""
        return sorted(p for p in self.folder.rglob("*") if p.is_file())

    def names(self) -> set[str]:
        """The results held (a split result counts once)."""
        return {_result_name(p.name) for p in self.files()}

    def remove(self, name: str) -> None:
        """Drop result `name` (all its pieces)."""
        for path in self.files():
            if _result_name(path.name) == name:
                path.unlink()

    def put_folder(
        self, name: str, folder: Path, replaces: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
    ) -> list[Path]:
        """Store `folder` as result `name` (a ``.tar.gz``)."""
        with tempfile.TemporaryDirectory() as tmp:
            archive = tar_folder(folder, Path(tmp) / f"{name}.tar.gz", exclude)
            return self.put_file(name, archive, replaces)

    def put_file(self, name: str, source: Path, replaces: tuple[str, ...] = ()) -> list[Path]:
        """Store `source` as result `name` (plus its suffixes), cut into pieces over the size cap;
        results named in `replaces` are dropped first. Raises `OutBoxFull` and writes nothing if
        the files would not all come back."""
        if not _SAFE.match(name):
            raise ValueError(f"result name {name!r}: use letters, digits, '.', '_', '-' only")
        # a piece stays just below the cap (16 MiB - 64 KiB for the real limit)
        size, cap = source.stat().st_size, self.limits.file_back_bytes * 255 // 256
        pieces = max(1, -(-size // cap))
        kept = [p for p in self.files() if _result_name(p.name) not in {name, *replaces}]
        if len(kept) + pieces > self.limits.files_back:
            raise OutBoxFull(
                f"{name} needs {pieces} file(s) but {len(kept)} of {self.limits.files_back} "
                f"are taken ({', '.join(p.name for p in kept)})"
            )
        for replaced in (name, *replaces):
            self.remove(replaced)
        filename = name + "".join(s for s in source.suffixes if s in (".tar", ".gz", ".json"))
        if pieces == 1:
            target = self.folder / filename
            shutil.copyfile(source, target)
            return [target]
        written = []
        with source.open("rb") as handle:
            for index in range(1, pieces + 1):
                target = self.folder / f"{filename}.part{index}-of-{pieces}"
                with target.open("wb") as sink:
                    remaining = cap
                    while remaining and (block := handle.read(min(CHUNK, remaining))):
                        sink.write(block)
                        remaining -= len(block)
                written.append(target)
        return written


def _result_name(filename: str) -> str:
    """``model.tar.gz.part1-of-2`` -> ``model``."""
    match = _PIECE.match(filename)
    base = match.group("name") if match else filename
    return base.split(".", 1)[0]


def collect(folder: Path, target: Path) -> dict[str, Path]:
    """Join returned pieces into whole files under `target`; returns result name -> file.
    Raises ValueError naming a result whose pieces are incomplete."""
    target.mkdir(parents=True, exist_ok=True)
    pieces: dict[str, dict[int, Path]] = {}
    totals: dict[str, int] = {}
    results: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        match = _PIECE.match(path.name)
        if match:
            pieces.setdefault(match.group("name"), {})[int(match.group("index"))] = path
            totals[match.group("name")] = int(match.group("total"))
        else:
            results[_result_name(path.name)] = shutil.copyfile(path, target / path.name)
    for filename, found in pieces.items():
        missing = sorted(set(range(1, totals[filename] + 1)) - set(found))
        if missing:
            raise ValueError(f"{folder}: {filename} lacks piece(s) {missing} of {totals[filename]}")
        joined = target / filename
        with joined.open("wb") as sink:
            for index in sorted(found):
                with found[index].open("rb") as source:
                    shutil.copyfileobj(source, sink, CHUNK)
        results[_result_name(filename)] = joined
    return results
