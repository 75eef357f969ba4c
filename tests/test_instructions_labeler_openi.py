"""Labeler rules added from the OpenI MeSH benchmark (benchmarks/labeler.py): hedged Pneumonia
mentions, clinical-correlation hedges, heart size at the upper limit of normal, nodular
opacities."""

from __future__ import annotations

import pytest

from instructions import label_report


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "infection" suggests pneumonia without stating it: uncertain, and still negatable
        ("Right lower lobe opacity, infectious process.", {"Pneumonia": -1, "Lung Opacity": 1}),
        ("No evidence of infection.", {"Pneumonia": 0, "No Finding": 1}),
        ("Left basilar pneumonia.", {"Pneumonia": 1}),
        # hedges that ask for clinical correlation
        ("Please correlate clinically for pneumonia.", {"Pneumonia": -1}),
        ("Patchy opacity worrisome for pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
        ("Clinical correlation for pneumonia is recommended.", {"Pneumonia": -1}),
        ("Pneumonia is in the differential.", {"Pneumonia": -1}),
        ("Atypical pneumonia would be a consideration.", {"Pneumonia": -1}),
        # upper limit of normal is normal; borderline stays uncertain
        ("Heart size is at the upper limits of normal.", {"Cardiomegaly": 0, "No Finding": 1}),
        ("Borderline heart size.", {"Cardiomegaly": -1}),
        # nodular opacities are opacities (OpenI indexes them so); nodules and masslike are lesions
        ("Nodular opacity in the right midlung.", {"Lung Opacity": 1}),
        ("A 6 mm nodule in the right midlung.", {"Lung Lesion": 1}),
        ("Right apical fibronodular scarring.", {"Lung Lesion": 1}),
        ("Masslike opacification of the right apex.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ],
)
def test_openi_derived_rules(text: str, expected: dict[str, int]) -> None:
    labels = label_report(text)
    for name, value in expected.items():
        assert labels.get(name) == value, (text, labels)
    if "No Finding" not in expected:
        assert "No Finding" not in labels, (text, labels)
