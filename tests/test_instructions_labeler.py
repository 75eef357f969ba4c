"""Labeler, prompt format and template tests on short report snippets written for these tests."""

from __future__ import annotations

import random

import pytest

from instructions import (
    CHEXPERT_CLASSES,
    IMAGE_PLACEHOLDER,
    InstructionTemplates,
    PromptFormat,
    default_instruction,
    extract_findings,
    label_report,
)


def test_classes_are_the_fourteen_chexpert_observations() -> None:
    assert len(CHEXPERT_CLASSES) == 14
    assert "No Finding" in CHEXPERT_CLASSES and "Support Devices" in CHEXPERT_CLASSES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No pleural effusion.", {"Pleural Effusion": 0, "No Finding": 1}),
        (
            "There is no pneumothorax or pleural effusion.",
            {"Pneumothorax": 0, "Pleural Effusion": 0},
        ),
        ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
        ("Right basilar opacity may represent pneumonia.", {"Pneumonia": -1, "Lung Opacity": 1}),
        ("Possible small left effusion.", {"Pleural Effusion": -1}),
        ("Atelectasis is likely.", {"Atelectasis": -1}),
        ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
        (
            "Atelectasis versus consolidation at the left base.",
            {"Atelectasis": -1, "Consolidation": -1},
        ),
        ("Large right pleural effusion.", {"Pleural Effusion": 1}),
        ("Heart size is normal.", {"Cardiomegaly": 0}),
        ("The heart is enlarged.", {"Cardiomegaly": 1}),
        ("Mild cardiomegaly.", {"Cardiomegaly": 1}),
        ("Heart size is borderline.", {"Cardiomegaly": -1}),
        (
            "No focal consolidation, but there is a small left pleural effusion.",
            {"Consolidation": 0, "Pleural Effusion": 1},
        ),
        ("No change in the moderate right pleural effusion.", {"Pleural Effusion": 1}),
        (
            "Left chest tube in place. No pneumothorax.",
            {"Support Devices": 1, "Pneumothorax": 0, "No Finding": 1},
        ),
        ("The endotracheal tube has been removed.", {"Support Devices": 0}),
        ("Old healed right rib fractures.", {"Fracture": 1}),
        ("Small pericardial effusion.", {"No Finding": 1}),
    ],
)
def test_label_report_cases(text: str, expected: dict[str, int]) -> None:
    labels = label_report(text)
    for name, value in expected.items():
        assert labels.get(name) == value, (text, labels)


def test_no_finding_absent_when_a_finding_is_positive() -> None:
    labels = label_report("Findings consistent with pulmonary edema.")
    assert labels["Edema"] == 1
    assert "No Finding" not in labels


def test_unmentioned_classes_are_absent_and_empty_text_is_empty() -> None:
    assert set(label_report("Small left pleural effusion.")) == {"Pleural Effusion"}
    assert label_report("   ") == {}


def test_laterality_location_and_severity() -> None:
    findings = extract_findings(
        "Small left pleural effusion. Right lower lobe consolidation. Bilateral pleural effusions."
    )
    by_sentence = {(f.label, f.sentence.split()[0]): f for f in findings}
    effusion = by_sentence[("Pleural Effusion", "Small")]
    assert (effusion.laterality, effusion.severity) == ("left", "small")
    consolidation = by_sentence[("Consolidation", "Right")]
    assert consolidation.laterality == "right" and consolidation.location == "right lower lobe"
    assert by_sentence[("Pleural Effusion", "Bilateral")].laterality == "bilateral"


def test_device_mention_names_the_device() -> None:
    findings = extract_findings(
        "Dual-chamber pacemaker with leads in the right atrium and ventricle."
    )
    devices = {f.mention for f in findings if f.label == "Support Devices"}
    assert "pacemaker" in devices


def test_prompt_format_renders_alpaca_and_round_trips(tmp_path) -> None:
    fmt = PromptFormat()
    with_input = fmt.render("Describe the image.", IMAGE_PLACEHOLDER)
    assert with_input.startswith("Below is an instruction")
    assert "### Input:\n<image>\n\n### Response:\n" in with_input and with_input.endswith(
        "### Response:\n"
    )
    without_input = fmt.render("Say hello.")
    assert "### Input:" not in without_input and without_input.endswith("### Response:\n")
    assert fmt.end == "### End"
    fmt.save(tmp_path / "prompt_format.json")
    assert PromptFormat.load(tmp_path / "prompt_format.json") == fmt
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt
    with pytest.raises(ValueError, match="unknown keys"):
        PromptFormat.from_dict({"bogus": "x"})


def test_templates_have_ten_paraphrases_per_direction_and_seeded_sampling() -> None:
    templates = InstructionTemplates.load()
    for task in ("cxr_to_report", "report_to_cxr"):
        assert len(set(templates.paraphrases[task])) >= 10
        assert default_instruction(task) in templates.paraphrases[task]
    draws_a = [templates.sample("cxr_to_report", random.Random(3)) for _ in range(1)]
    draws_b = [templates.sample("cxr_to_report", random.Random(3)) for _ in range(1)]
    assert draws_a == draws_b
    rng = random.Random(0)
    assert len({templates.sample("report_to_cxr", rng) for _ in range(200)}) >= 10
    with pytest.raises(KeyError, match="no instruction templates"):
        templates.sample("nope", rng)


def test_import_pulls_in_no_model_package() -> None:
    import subprocess
    import sys

    code = (
        "import sys, instructions, instructions.cli, instructions.vqa_llm; "
        "heavy = {'torch', 'transformers', 'datasets', 'vqgan', 'llmcxr'} & set(sys.modules); "
        "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_film_abnormal_reads_the_labels_certain_status() -> None:
    from instructions.labeler import film_abnormal

    assert film_abnormal({"Pleural Effusion": 0, "No Finding": 1}) is False
    assert film_abnormal({"Edema": 1, "No Finding": 0}) is True
    # support devices do not make a film abnormal; an uncertain finding leaves it unknown
    assert film_abnormal({"Support Devices": 1, "No Finding": 1}) is False
    assert film_abnormal({"Edema": -1, "Cardiomegaly": 1}) is None
    assert film_abnormal({}) is None


def test_question_kind_names_the_yes_no_questions_synthesis_asks() -> None:
    from instructions.vqa import question_kind, synthesize_vqa

    assert question_kind("Is this chest X-ray normal?") == ("normal", "No Finding")
    assert question_kind(" Is there a pleural effusion? ") == ("presence", "Pleural Effusion")
    assert question_kind("Can you see a lung nodule or mass in this image?") == (
        "presence",
        "Lung Lesion",
    )
    assert question_kind("Where is the pleural effusion located?") is None
    assert question_kind("Is there a dragon?") is None
    pairs = synthesize_vqa(
        extract_findings("Small left pleural effusion. No pneumothorax."), "", random.Random(0)
    )
    for pair in pairs:
        asked = question_kind(pair.question)
        assert (asked is not None) == (pair.kind in ("presence", "normal"))
        assert asked is None or asked == (pair.kind, pair.label)
