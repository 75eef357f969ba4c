"""Two `llmcxr evaluate` report runs on the same films, compared film by film.

    .venv/bin/python benchmarks/paired_reports.py --a runs/eval_new --b runs/eval_shipped --out F

Each run's ``items/report.jsonl`` holds the sampled reports per film; on the films both runs hold,
this labels them as the report task does (`llmcxr.evaluation.report_task.sampled_label_scores`,
with the section, uncertain-label rule and headline threshold the runs' ``metrics.json`` record,
which must agree) and prints each run's headline macro AUROC and
the difference a - b with a paired bootstrap 95 % interval (items resampled once for both).
Why: the evaluation's per-run intervals hold the noise of which films were drawn twice, so two
runs whose intervals overlap may still differ; the paired interval says whether they do. It does
not replace a rule that was fixed on per-run intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cxrcommon.files import atomic_write

LABEL_SETTINGS = ("report_section", "uncertain_as_positive", "min_positives")
"""What decides the truth and the headline classes: both runs must have used the same."""


def read_run(run: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The report task's stored rows of an evaluation run, by key, and its label settings."""
    items, metrics = run / "items" / "report.jsonl", run / "metrics.json"
    for path in (items, metrics):
        if not path.is_file():
            raise SystemExit(
                f"{path} is missing: pass a finished `llmcxr evaluate --tasks report` folder"
            )
    rows = [json.loads(line) for line in items.read_text().splitlines() if line.strip()]
    settings = json.loads(metrics.read_text())["run"]
    return {row["key"]: row for row in rows}, {k: settings[k] for k in LABEL_SETTINGS}


def compare(a: Path, b: Path, n_boot: int, seed: int) -> dict[str, Any]:
    """Headline macro AUROC of both runs on their common films and the paired difference."""
    from llmcxr.evaluation.labelling import chexpert_classes, label_matrix
    from llmcxr.evaluation.metrics import paired_macro_auroc_difference
    from llmcxr.evaluation.report_task import sampled_label_scores

    (rows_a, settings), (rows_b, settings_b) = read_run(a), read_run(b)
    if settings != settings_b:
        raise SystemExit(f"the runs labelled reports differently: {settings} against {settings_b}")
    keys = sorted(set(rows_a) & set(rows_b))
    if not keys:
        raise SystemExit("the two runs share no film")
    if any(rows_a[k]["reference"] != rows_b[k]["reference"] for k in keys):
        raise SystemExit("the runs hold different references for one film: not the same split")
    kw = {
        "section": settings["report_section"],
        "uncertain_as_positive": settings["uncertain_as_positive"],
    }
    classes = chexpert_classes()
    truth = label_matrix([rows_a[k]["reference"] for k in keys], classes, **kw)
    score_a, _ = sampled_label_scores([rows_a[k]["generated"] for k in keys], classes, **kw)
    score_b, _ = sampled_label_scores([rows_b[k]["generated"] for k in keys], classes, **kw)
    result = paired_macro_auroc_difference(
        truth, score_a, score_b, min_positives=settings["min_positives"], n_boot=n_boot, seed=seed
    )
    return {"films": len(keys), **settings, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="evaluation folder (candidate)")
    parser.add_argument("--b", type=Path, required=True, help="evaluation folder (reference)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    args = parser.parse_args(argv)
    result = {
        "a": str(args.a),
        "b": str(args.b),
        "seed": args.seed,
        **compare(args.a, args.b, args.bootstrap, args.seed),
    }
    print(json.dumps(result, indent=2))
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
