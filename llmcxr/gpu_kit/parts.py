"""Cut a file into sha256-checked parts and join them again (standard library only).

The payload of a GPU window is one archive that no single command may carry: `cut` writes it as
numbered parts, each into the folder one command carries, plus a manifest naming every part's
size and digest; `join` checks each part on the GPU machine and rebuilds the archive, naming the
missing or damaged part and the command that sends it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST = "manifest.json"
CHUNK = 4 * 2**20


class PartError(RuntimeError):
    """A part is missing or does not match its recorded digest."""


@dataclass(frozen=True)
class Part:
    """One numbered part of the payload and where (relative to the bundle) it lies."""

    index: int
    path: str
    bytes: int
    sha256: str


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def send_folder(index: int) -> str:
    """Bundle-relative folder carried by the command that sends part `index`."""
    return f"send-{index}"


def cut(payload: Path, bundle: Path, sizes: list[int]) -> list[Part]:
    """Write `payload` as consecutive parts of the given byte `sizes` (the last may be shorter)
    into ``bundle/send-<i>/part-<i>.bin``; returns the parts in order."""
    parts: list[Part] = []
    with payload.open("rb") as source:
        for index, size in enumerate(sizes, start=1):
            rel = f"{send_folder(index)}/part-{index}.bin"
            target = bundle / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            digest, written = hashlib.sha256(), 0
            with target.open("wb") as sink:
                while written < size and (block := source.read(min(CHUNK, size - written))):
                    sink.write(block)
                    digest.update(block)
                    written += len(block)
            if written == 0:
                target.unlink()
                break
            parts.append(Part(index, rel, written, digest.hexdigest()))
        if source.read(1):
            raise ValueError(f"{payload}: the part sizes {sizes} do not cover the whole file")
    return parts


def write_manifest(bundle: Path, parts: list[Part], info: dict) -> dict:
    """Write the manifest into the bundle and into every send folder (each command has it)."""
    manifest = {**info, "parts": [asdict(p) for p in parts]}
    text = json.dumps(manifest, indent=2)
    (bundle / MANIFEST).write_text(text)
    for part in parts:
        (bundle / part.path).parent.joinpath(MANIFEST).write_text(text)
    return manifest


def read_manifest(bundle: Path) -> dict:
    """The manifest of a bundle, from its top level or any send folder that arrived."""
    for candidate in [bundle / MANIFEST, *sorted(bundle.glob(f"send-*/{MANIFEST}"))]:
        if candidate.is_file():
            return json.loads(candidate.read_text())
    raise PartError(f"{bundle}: no {MANIFEST} (no send folder of the bundle is here)")


def check_part(bundle: Path, part: Part, total: int) -> None:
    """Raise `PartError` naming the part and the command to repeat when it is missing or damaged."""
    path = bundle / part.path
    again = f"send it again with the command that carries {bundle.name}/{Path(part.path).parent}"
    if not path.is_file():
        raise PartError(f"part {part.index} of {total} is missing: {path} not found; {again}")
    if path.stat().st_size != part.bytes or sha256_file(path) != part.sha256:
        raise PartError(
            f"part {part.index} of {total} is damaged: {path} (sha256 differs); {again}"
        )


def parts_of(manifest: dict) -> list[Part]:
    """The manifest's parts as `Part` objects."""
    return [Part(**p) for p in manifest["parts"]]


def join(bundle: Path, target: Path) -> Path:
    """Check every part, then concatenate them into `target` and check the whole payload."""
    manifest = read_manifest(bundle)
    parts = parts_of(manifest)
    for part in parts:
        check_part(bundle, part, len(parts))
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as sink:
        for part in parts:
            with (bundle / part.path).open("rb") as source:
                shutil.copyfileobj(source, sink, CHUNK)
    if sha256_file(target) != manifest["payload_sha256"]:
        raise PartError(f"{target}: the joined payload's sha256 differs from the manifest's")
    return target
