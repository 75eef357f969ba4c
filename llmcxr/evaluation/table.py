"""Markdown tables laid out like LLM-CXR's Tables 1 and 4, our rows beside the published ones."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from llmcxr.evaluation import published
from llmcxr.evaluation.metrics import LABEL_CONVENTIONS


def fmt(value: Any, ci: Sequence[float] | None = None, digits: int = 3) -> str:
    """A number with an optional bootstrap interval; '-' for missing or undefined values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    if ci is not None and not any(c is None or math.isnan(c) for c in ci):
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _report_row(name: str, m: Mapping[str, Any]) -> list[str]:
    ci = m.get("ci95", {})
    nlg = m.get("nlg", {})
    return [
        name,
        fmt(m["auroc"]["macro"], ci.get("auroc_macro")),
        fmt(m["f1"]["macro"], ci.get("f1_macro")),
        fmt(m["auroc"].get("macro_all")),
        fmt(m["f1"].get("macro_all")),
        *(fmt(nlg.get(f"bleu_{n}")) for n in range(1, 5)),
        fmt(nlg.get("rouge_l"), ci.get("rouge_l")),
        fmt(nlg.get("cider_d"), ci.get("cider_d")),
    ]


REFERENCE_NAMES = {
    "classifier_real": "classifier on the real film (reference)",
    "classifier_reconstruction": "classifier on the tokenizer's reconstruction",
}
REFERENCE_NOTE = (
    "Reference readers: the evaluation's classifier on each real film and on its reconstruction "
    "by the model's tokenizer, at the tokenizer's size (class probability as the score, positive "
    "at its calibrated 0.5). A report reader is not expected to beat the classifier on the real "
    "film; where that is near chance, these labels cannot show a reading gain."
)


def _reference_readers(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The classifier reference readers a CXR -> report result carries, with their table names."""
    return [(name, result[key]) for key, name in REFERENCE_NAMES.items() if key in result]


def _micro_footnote(rows: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Micro averages, as a footnote: the most frequent class dominates them."""
    parts = [
        f"{name} AUROC {fmt(m['auroc']['micro'])} / F1 {fmt(m['f1']['micro'])}" for name, m in rows
    ]
    return (
        "Micro averages (dominated by the most frequent class; a constant answer scores high): "
        + "; ".join(parts)
        + "."
    )


def per_label_table(systems: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Per-class support, AUROC and F1 of each system; headline classes marked with *."""
    first = next(iter(systems.values()))
    headline = set(first.get("headline_classes", []))
    header = ["class", "positives"] + [
        f"{name} {metric}" for name in systems for metric in ("AUROC", "F1")
    ]
    rows = []
    for cls, values in first["per_label"].items():
        row = [cls + (" *" if cls in headline else ""), str(values["support"])]
        for m in systems.values():
            row += [fmt(m["per_label"][cls]["auroc"]), fmt(m["per_label"][cls]["f1"])]
        rows.append(row)
    return _table(header, rows)


def report_table(result: Mapping[str, Any]) -> list[str]:
    """Table 1: CXR -> report. Headline macro over classes with enough positives; the published
    rows average every class, so they sit in the 'all classes' columns."""
    header = [
        "system",
        "AUROC macro",
        "F1 macro",
        "AUROC macro, all classes",
        "F1 macro, all classes",
        "BLEU-1",
        "BLEU-2",
        "BLEU-3",
        "BLEU-4",
        "ROUGE-L",
        "CIDEr-D",
    ]
    rows = [_report_row("ours (this run)", result)]
    if "baseline_most_common_report" in result:
        rows.append(
            _report_row("most common training report", result["baseline_most_common_report"])
        )
    rows += [_report_row(name, m) for name, m in _reference_readers(result)]
    for name, p in published.REPORT_ROWS.items():
        rows.append([name, "-", "-", fmt(p["auroc_macro"]), fmt(p["f1_macro"])] + ["-"] * 6)
    return _table(header, rows)


def nih_table(result: Mapping[str, Any]) -> list[str]:
    """CXR -> report on real NIH images against their NIH labels, beside always "No Finding"."""
    header = ["system", "F1 micro", "AUROC macro", "F1 macro", "AUROC micro"]
    rows = []
    systems = [("ours (this run)", result), ('always "No Finding"', result["baseline_no_finding"])]
    for name, m in systems + _reference_readers(result):
        ci = m.get("ci95", {})
        rows.append(
            [
                name,
                fmt(m["f1"]["micro"], ci.get("f1_micro")),
                fmt(m["auroc"]["macro"], ci.get("auroc_macro")),
                fmt(m["f1"]["macro"], ci.get("f1_macro")),
                fmt(m["auroc"]["micro"]),
            ]
        )
    return _table(header, rows)


def image_table(result: Mapping[str, Any]) -> list[str]:
    """Table 4: report -> CXR, label agreement of the classifier on generated images."""
    header = [
        "system",
        "AUROC macro",
        "F1 macro",
        "AUROC macro, all classes",
        "FID Inception",
        "FID XRV",
        "diversity (pairwise SSIM)",
    ]
    gen = result["generated"]
    ci = gen.get("ci95", {})
    rows = [
        [
            "ours, generated images",
            fmt(gen["auroc"]["macro"], ci.get("auroc_macro")),
            fmt(gen["f1"]["macro"], ci.get("f1_macro")),
            fmt(gen["auroc"].get("macro_all")),
            fmt(result.get("fid_inception"), digits=2),
            fmt(result.get("fid_xrv")),
            fmt(result.get("diversity_ssim"), result.get("diversity_ssim_ci95")),
        ]
    ]
    for key, name in (
        ("tokenizer_reconstruction", "tokenizer reconstructions of the real images"),
        ("real", "real test images (classifier reference)"),
    ):
        if key in result:
            m = result[key]
            fid = result["realism"][key]["fid"] if key in result.get("realism", {}) else None
            rows.append(
                [
                    name,
                    fmt(m["auroc"]["macro"]),
                    fmt(m["f1"]["macro"]),
                    fmt(m["auroc"].get("macro_all")),
                    "-",
                    fmt(fid),
                    "-",
                ]
            )
    for name, p in published.IMAGE_ROWS.items():
        rows.append(
            [
                name,
                "-",
                "-",
                fmt(p["auroc_macro"]),
                fmt(p["fid_inception"], digits=2),
                fmt(p["fid_xrv"]),
                "-",
            ]
        )
    return _table(header, rows)


def realism_table(realism: Mapping[str, Any]) -> list[str]:
    """Precision, recall, KID and FID against the real images, with the tokenizer's ceiling and
    the tile-shuffled negative control (older results have no control row)."""
    header = ["images", "n", "precision", "recall", "KID", "FID XRV"]
    rows = []
    for key, name in (
        ("generated", "generated"),
        ("tokenizer_reconstruction", "tokenizer reconstructions (ceiling)"),
        ("control", "real images, 4 x 4 tiles shuffled (negative control)"),
    ):
        if key not in realism:
            continue
        m = realism[key]
        rows.append(
            [
                name,
                str(m["n"]),
                fmt(m["precision"]),
                fmt(m["recall"]),
                fmt(m["kid"], digits=4),
                fmt(m["fid"]),
            ]
        )
    return _table(header, rows)


def vqa_table(result: Mapping[str, Any]) -> list[str]:
    header = ["system", "yes/no accuracy", "open token F1", "open ROUGE-L", "ELIXR-protocol score"]
    rows = [
        [
            "ours (this run)",
            fmt(result.get("yes_no_accuracy"), result.get("yes_no_accuracy_ci95")),
            fmt(result.get("open_token_f1"), result.get("open_token_f1_ci95")),
            fmt(result.get("open_rouge_l")),
            "-",
        ]
    ]
    rows += [[name, "-", "-", "-", fmt(score)] for name, score in published.VQA_ROWS.items()]
    return _table(header, rows)


def render(metrics: Mapping[str, Any]) -> str:
    """The whole Markdown report for ``metrics.json``'s content."""
    run = metrics["run"]
    lines = [
        "# llmcxr evaluation",
        "",
        (
            f"Model `{run['model'] or 'embedded default'}`, data `{run['data']}` stage "
            f"{run['stage']} split `{run['split']}`; "
            + (
                f"a seeded random {run['limit']} records per task"
                + (
                    f" (subset seed {run['subset_seed']}, sampling seed {run['seed']}). "
                    if run.get("subset_seed") not in (None, run.get("seed"))
                    else ". "
                )
                if run["limit"]
                else "all records. "
            )
            + (
                f"Drawings with guidance scale {run['guidance_scale']:g} (not the model's own). "
                if run.get("guidance_scale") is not None
                else ""
            )
            + "Brackets: bootstrap 95 % intervals (items resampled)."
        ),
        "",
    ]
    if "report" in metrics and metrics["report"].get("n_items"):
        r = metrics["report"]
        lines += [
            (
                f"## CXR -> report ({r['n_items']} images, {r['report_section']} text, "
                f"{r['samples_per_image']} sample(s) per image)"
            ),
            "",
        ]
        lines += report_table(r) + [""]
        lines += [
            (
                f"AUROC / F1 macro over the {len(r['headline_classes'])} classes with >= "
                f"{r['min_positives']} positives (marked * below); 'all classes' averages every "
                f"class (AUROC: the {len(r['per_label']) - r['auroc']['n_undefined']} whose labels "
                "take both values), as the published rows do. NLG scores use the first sampled "
                "report per image against every label-matched reference of the split "
                f"({fmt(r.get('nlg_references_per_item'), digits=1)} per image on average); METEOR "
                "is omitted (it needs WordNet data or Java, not available offline)."
            ),
            "",
        ]
        if "classifier_real" in r:
            lines += [REFERENCE_NOTE, ""]
        systems = {"ours": r}
        if "baseline_most_common_report" in r:
            systems["most common report"] = r["baseline_most_common_report"]
        if "classifier_real" in r:
            systems["classifier (real)"] = r["classifier_real"]
        lines += per_label_table(systems) + [""]
        lines += [_micro_footnote([(name, m) for name, m in systems.items()]), ""]
    if "nih" in metrics and metrics["nih"].get("n_items"):
        n = metrics["nih"]
        lines += [
            (
                f"## CXR -> report on real NIH ChestX-ray14 images, against their NIH labels "
                f"({n['n_items']} images, {n['samples_per_image']} sample(s) each)"
            ),
            "",
        ]
        lines += nih_table(n) + [""]
        lines += [
            (
                f"Macro over the {len(n['headline_classes'])} classes with >= {n['min_positives']} "
                "positives (marked *); NIH findings mapped to CheXpert classes (Effusion -> "
                "Pleural Effusion, Infiltration -> Lung Opacity, Mass / Nodule -> Lung Lesion, "
                "Pleural_Thickening -> Pleural Other)."
            ),
            "",
        ]
        if "classifier_real" in n:
            lines += [REFERENCE_NOTE, ""]
        per_label = {"ours": n, '"No Finding"': n["baseline_no_finding"]}
        if "classifier_real" in n:
            per_label["classifier (real)"] = n["classifier_real"]
        lines += per_label_table(per_label) + [""]
    if "image" in metrics and metrics["image"].get("generated"):
        im = metrics["image"]
        lines += [
            (
                f"## Report -> CXR ({im['generated']['n_items']} reports, "
                f"{im['images_per_report']} image(s) each; classes: {', '.join(im['classes'])})"
            ),
            "",
        ]
        lines += image_table(im) + [""]
        lines += [
            (
                f"AUROC / F1 macro over the {len(im['generated']['headline_classes'])} classes "
                f"with >= {im['generated']['min_positives']} positives in the reports' labels; "
                "'all classes' over the "
                f"{len(im['classes']) - im['generated']['auroc']['n_undefined']} with both values. "
                f"Images compared at the tokenizer's {im['resolution']} px. FID XRV on the "
                "classifier's pooled features; Inception FID only with --inception-weights "
                "(torchvision Inception-v3). " + _micro_footnote([("generated", im["generated"])])
            ),
            "",
        ]
        if "realism" in im:
            lines += [
                (
                    f"Realism against the {im['realism']['n_real']} real test images (classifier "
                    "features; precision / recall: Kynkäänniemi et al. 2019, k = "
                    f"{im['realism']['k']}; KID: unbiased polynomial-kernel MMD):"
                ),
                "",
            ]
            lines += realism_table(im["realism"]) + [""]
        near = im.get("nearest_real_ssim", {})
        if near.get("n_generated"):
            lines += [
                (
                    f"Nearest real image, in pixels (mean SSIM of each image to the most similar "
                    f"of the {near['n_real']} real test images): generated "
                    f"{fmt(near['generated'], near['generated_ci95'])}; a real image against "
                    "the other real ones "
                    f"{fmt(near['real_leave_one_out'], near['real_leave_one_out_ci95'])} "
                    "(the level to reach)"
                    + (
                        "; a real image with its 4 x 4 tiles shuffled "
                        f"{fmt(near['control'], near['control_ci95'])} (negative control)."
                        if "control" in near
                        else "."
                    )
                ),
                "",
            ]
        low = near.get("lowpass")
        if low:
            sharp = near["sharpness"]
            lines += [
                (
                    f"At matched sharpness (drawings and real images low-passed, Gaussian sigma "
                    f"{near['lowpass_sigma']:g} px; SSIM rewards blur, so this is the layout "
                    f"measure): generated {fmt(low['generated'], low['generated_ci95'])}; real "
                    f"{fmt(low['real_leave_one_out'], low['real_leave_one_out_ci95'])}; tiles "
                    f"shuffled {fmt(low['control'], low['control_ci95'])}; the mean real image "
                    f"{fmt(low['mean_real_image'])} (an average chest scores high: read diversity "
                    "beside it)."
                    + (
                        " Generated minus real "
                        f"{fmt(low['generated_minus_real'], low['generated_minus_real_ci95'])} "
                        "(0 is the real level; above it, more average than real films; below, "
                        "less chest-like)."
                        if "generated_minus_real" in low
                        else ""
                    )
                    + " Sharpness (mean gradient magnitude): generated "
                    f"{fmt(sharp['generated'], digits=4)}, real {fmt(sharp['real'], digits=4)}."
                ),
                "",
            ]
    if "vqa" in metrics and metrics["vqa"].get("n_items"):
        v = metrics["vqa"]
        lines += [f"## VQA ({v['n_yes_no']} yes/no, {v['n_open']} open questions)", ""]
        lines += vqa_table(v) + [""]
    trip = metrics.get("roundtrip", {})
    if trip:
        lines += ["## Round trips", ""]
        rows = []
        if "report_image_report" in trip:
            t = trip["report_image_report"]
            rows.append(
                [
                    "report -> image -> report",
                    str(t["n_items"]),
                    (
                        f"label agreement {fmt(t['label_agreement'])}; exact label set "
                        f"{fmt(t['exact_label_match'], t['exact_label_match_ci95'])}; "
                        f"F1 micro {fmt(t['f1']['micro'])}"
                    ),
                ]
            )
        if "image_report_image" in trip:
            t = trip["image_report_image"]
            rows.append(
                [
                    "image -> report -> image",
                    str(t["n_items"]),
                    (
                        f"classifier agreement {fmt(t['prediction_agreement'])}; mean prob. gap "
                        f"{fmt(t['mean_abs_probability_gap'])}; feature cosine "
                        f"{fmt(t['feature_cosine'], t['feature_cosine_ci95'])}"
                    ),
                ]
            )
        lines += _table(["trip", "items", "agreement with the original"], rows) + [""]
    if "tokenizer" in metrics and metrics["tokenizer"].get("n_items"):
        t = metrics["tokenizer"]
        lines += [f"## Image tokenizer reconstruction ({t['n_items']} test images)", ""]
        lines += _table(
            ["PSNR (dB)", "SSIM", "feature cosine", "classifier agreement", "codebook usage"],
            [
                [
                    fmt(t["psnr"], t.get("psnr_ci95"), 2),
                    fmt(t["ssim"], t.get("ssim_ci95")),
                    fmt(t["feature_cosine"]),
                    fmt(t["prediction_agreement"]),
                    fmt(t["codebook_usage"]),
                ]
            ],
        ) + [""]
    skipped = {task: n for task, n in metrics.get("skipped", {}).items() if n}
    if skipped:
        lines += [
            "Records the model rejected (e.g. over-long prompts), left out: "
            + ", ".join(f"{k} {v}" for k, v in skipped.items()),
            "",
        ]
    lines += ["## How labels are scored", ""]
    lines += [f"- {key.replace('_', ' ')}: {text}" for key, text in LABEL_CONVENTIONS.items()]
    lines += [
        "",
        (
            f"Published rows: {published.CITATION}. They used the CheXpert labeler on "
            "MIMIC-CXR; ours use the project's labeler on the data named above, so compare "
            "like with like only when the data are the same."
        ),
        "",
    ]
    return "\n".join(lines)
