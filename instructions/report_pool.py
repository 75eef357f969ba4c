"""Report pools of a stage: the reports a paired record may draw its text from, stored once.

A paired study (``instructions.paired``) holds one frozen OpenI report, picked at random from the
reports whose labels match its image. Its direction records (CXR->report, report->CXR) name that
whole label-matched pool in their ``report_pool`` column; the stage folder's ``report_pool.json``
holds each pool's report ids and each report's text as this stage writes it (its filters and text
sections applied), so a training run can draw another report of the pool each epoch. Pools never
cross splits: they are drawn per split, and the build checks it.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cxrcommon.files import atomic_write_text
from instructions.filters import FilterPipeline, FilterRule
from instructions.records import Record
from instructions.reports import ReportPool

REPORT_POOL_FILE = "report_pool.json"


@dataclass(frozen=True)
class ReportPools:
    """Pool key -> report ids, and report id -> text; the content of ``report_pool.json``."""

    pools: dict[str, tuple[str, ...]]
    texts: dict[str, str]

    def save(self, stage_dir: str | Path) -> None:
        """Write ``report_pool.json`` into a stage folder."""
        data = {"pools": {k: list(v) for k, v in self.pools.items()}, "reports": self.texts}
        atomic_write_text(Path(stage_dir) / REPORT_POOL_FILE, json.dumps(data))

    @classmethod
    def load(cls, stage_dir: str | Path) -> ReportPools:
        """Read a stage folder's ``report_pool.json``; a pool naming an unknown report is an
        error."""
        path = Path(stage_dir) / REPORT_POOL_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: its records name report pools; rebuild the dataset"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        pools = {k: tuple(v) for k, v in data["pools"].items()}
        texts = dict(data["reports"])
        missing = {i for ids in pools.values() for i in ids} - set(texts)
        if missing:
            raise ValueError(f"{path}: pools name reports without a text: {sorted(missing)[:5]}")
        return cls(pools, texts)


def stage_pools(
    records: Mapping[str, list[Record]],
    pools: Mapping[str, ReportPool],
    rules: list[FilterRule],
    text_sections: tuple[str, ...],
) -> ReportPools:
    """The pools ``records`` name, each member's text filtered by the stage's ``rules``; members
    the filters drop, leave empty or leave without the finding the pool's images have (e.g. a
    dropped sentence about a prior study took it) leave the pool. A fresh pipeline keeps the
    card's counts."""
    used = sorted({r.report_pool for recs in records.values() for r in recs if r.report_pool})
    members = {r.report_id: r for key in used for r in pools[key].reports}
    texts = {
        r.report_id: r.text(text_sections)
        for r in FilterPipeline(list(rules))(members[i] for i in sorted(members))
    }
    texts = {i: t for i, t in texts.items() if t}
    kept = {key: _fitting(pools[key], texts) for key in used}
    kept_ids = {i for ids in kept.values() for i in ids}
    return ReportPools(kept, {i: t for i, t in texts.items() if i in kept_ids})


def _fitting(pool: ReportPool, texts: Mapping[str, str]) -> tuple[str, ...]:
    """The ids of a pool's members whose stage text exists and still fits the pool's images."""
    return tuple(
        r.report_id
        for r in pool.reports
        if r.report_id in texts and (pool.fits is None or pool.fits(texts[r.report_id]))
    )


def pool_summary(records: Mapping[str, list[Record]], report_pools: ReportPools) -> dict:
    """For the card: pools and reports stored, records that may draw per split, and the pool size
    those records draw from (min / median / max over the records of each split)."""
    summary: dict[str, object] = {
        "pools": len(report_pools.pools),
        "reports": len(report_pools.texts),
    }
    for split, recs in records.items():
        sizes = [len(report_pools.pools[r.report_pool]) for r in recs if r.report_pool]
        summary[split] = {
            "records": len(sizes),
            "pool_size": (
                {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)}
                if sizes
                else {}
            ),
        }
    return summary
