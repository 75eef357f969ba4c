"""Published figures of LLM-CXR and its peers, for comparison rows in the evaluation tables.

Source: Lee et al., "LLM-CXR: Instruction-Finetuned LLM for CXR Image Understanding and
Generation", ICLR 2024 (arXiv 2305.11490), Tables 1 and 4 and the VQA results; the peer rows are
the figures that paper reports for them. All were measured on 3,530 AP/PA MIMIC-CXR test images
with the rule-based CheXpert labeler, so they compare with ours only on the same data and labeler.
"""

from __future__ import annotations

CITATION = "Lee et al., LLM-CXR, ICLR 2024 (arXiv 2305.11490); MIMIC-CXR, 3,530 AP/PA test images"

REPORT_ROWS: dict[str, dict[str, float]] = {
    "LLM-CXR (paper)": {
        "auroc_micro": 0.628,
        "auroc_macro": 0.555,
        "f1_micro": 0.360,
        "f1_macro": 0.211,
    },
    "XrayGPT (LLM-CXR paper)": {
        "auroc_micro": 0.617,
        "auroc_macro": 0.548,
        "f1_micro": 0.326,
        "f1_macro": 0.209,
    },
    "UniXGen-512 (LLM-CXR paper)": {
        "auroc_micro": 0.668,
        "auroc_macro": 0.576,
        "f1_micro": 0.413,
        "f1_macro": 0.245,
    },
}
"""Table 1, CXR -> report: label AUROC and F1 (micro / macro) over the 14 CheXpert classes."""

IMAGE_ROWS: dict[str, dict[str, float]] = {
    "LLM-CXR (paper)": {
        "auroc_micro": 0.791,
        "auroc_macro": 0.798,
        "fid_inception": 22.75,
        "fid_xrv": 0.714,
    },
    "UniXGen (LLM-CXR paper)": {
        "auroc_micro": 0.744,
        "auroc_macro": 0.750,
        "fid_inception": 78.19,
        "fid_xrv": 7.894,
    },
    "RoentGen (LLM-CXR paper)": {
        "auroc_micro": 0.706,
        "auroc_macro": 0.701,
        "fid_inception": 42.38,
        "fid_xrv": 6.039,
    },
}
"""Table 4, report -> CXR: classifier AUROC on generated images (11 labels), FID Inception / XRV."""

VQA_ROWS: dict[str, float] = {
    "LLM-CXR (paper)": 0.448,
    "RadFM (LLM-CXR paper)": 0.327,
    "XrayGPT (LLM-CXR paper)": 0.252,
    "ELIXR (LLM-CXR paper)": 0.548,
}
"""VQA score under ELIXR's graded protocol (all questions, 0 / 0.5 / 1): not the same measure as
our yes/no accuracy, shown for orientation only."""
