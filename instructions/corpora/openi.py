"""OpenI / Indiana University chest X-ray reports, read from the torchxrayvision wheel (never
copied).

The archive ``torchxrayvision/data/NLMCXR_reports.tgz`` holds 3,955 XML reports (CC BY-NC-ND 4.0)
with COMPARISON, INDICATION, FINDINGS, IMPRESSION, MeSH terms and the ids of each report's images.
OpenI has one study per report, so the patient id is the report id. The images are not shipped; an
optional DICOM-metadata CSV gives each image's view.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from instructions.corpora.csvfiles import iter_csv_rows
from instructions.reports import ImageRef, ReadStats, Report, normalize_text

logger = logging.getLogger(__name__)

SOURCE = "openi"
_SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")
_REPEAT_SUFFIX = re.compile(r"^(CXR\d+)_\d+_(IM-.*)$")


def default_openi_archive() -> Path:
    """Path of ``NLMCXR_reports.tgz`` inside the installed torchxrayvision package (not
    imported)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; it ships the OpenI reports (pip install "
            "torchxrayvision) or pass --openi-archive PATH to NLMCXR_reports.tgz"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    if not path.is_file():
        raise FileNotFoundError(f"OpenI report archive not found at {path}")
    return path


def metadata_image_id(xml_image_id: str) -> str:
    """Map an XML image id (``CXR1_1_IM-0001-3001``) to the metadata CSV's id
    (``CXR1_IM-0001-3001``)."""
    match = _REPEAT_SUFFIX.match(xml_image_id)
    return f"{match.group(1)}_{match.group(2)}" if match else xml_image_id


def read_view_metadata(path: str | Path) -> dict[str, str]:
    """Image id -> view position (PA, AP, LL, ...) from ``nlmcxr_dicom_metadata.csv.gz``."""
    return {
        row["imageid"]: row["View Position"].strip().upper()
        for row in iter_csv_rows(path, ("imageid", "View Position"))
    }


def parse_openi_xml(data: bytes, views: dict[str, str] | None = None) -> Report:
    """One OpenI XML document -> ``Report`` (raises ``ValueError`` when it is not a report)."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise ValueError(f"malformed XML: {error}") from error
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError("no uId")
    report_id = uid.get("id", "")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        body = normalize_text("".join(node.itertext()))
        if label in _SECTIONS and body:
            sections[label] = body
    mesh = [normalize_text(m.text or "") for m in root.iter() if m.tag in ("major", "automatic")]
    majors = [normalize_text(m.text or "") for m in root.iter("major")]
    images = []
    for node in root.iter("parentImage"):
        image_id = node.get("id", "")
        if image_id:
            view = (views or {}).get(metadata_image_id(image_id), "")
            images.append(ImageRef(image_id=image_id, view=view))
    report = Report(
        report_id=report_id, patient_id=report_id, source=SOURCE, sections=sections, images=images
    )
    report.mesh = [m for m in majors if m] + [f"auto:{m}" for m in mesh if m and m not in majors]
    return report


def read_openi(
    archive: str | Path | None = None,
    metadata_csv: str | Path | None = None,
    stats: ReadStats | None = None,
    limit: int | None = None,
) -> Iterator[Report]:
    """Yield the OpenI reports of ``archive`` (default: the torchxrayvision wheel's), in file-name
    order.

    Malformed documents are counted in ``stats`` and skipped. ``mesh`` holds the MeSH major terms,
    then the automatic ones prefixed ``auto:``.
    """
    archive = Path(archive) if archive else default_openi_archive()
    stats = stats if stats is not None else ReadStats()
    views = read_view_metadata(metadata_csv) if metadata_csv else None
    documents: dict[str, bytes] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:  # stream order: a gzip tar is slow to read out of order
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                stats.skip("unreadable archive member")
                continue
            documents[member.name] = handle.read()
    names = sorted(documents, key=_natural)
    if limit is not None:
        names = names[:limit]
    for name in tqdm(names, desc="OpenI reports", unit="report", leave=False):
        try:
            report = parse_openi_xml(documents[name], views)
        except ValueError as error:
            logger.warning("skipping %s: %s", name, error)
            stats.skip("malformed XML")
            continue
        stats.read += 1
        yield report


def _natural(name: str) -> tuple[int, str]:
    stem = Path(name).stem
    return (int(stem), name) if stem.isdigit() else (1 << 30, name)
