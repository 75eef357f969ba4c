"""VQA consistency, task mix, patient splits, the two stages, pairing and the CLI end to end
(shipped OpenI)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from instructions import (
    CHEXPERT_CLASSES,
    IMAGE_PLACEHOLDER,
    PromptFormat,
    extract_findings,
    label_report,
)
from instructions.build import BuildConfig, StageConfig, build_dataset
from instructions.cli import main
from instructions.corpora import read_openi
from instructions.filters import FilterPipeline, filter_cues, stage1_rules
from instructions.labeler import NOT_ABNORMAL
from instructions.paired import pair_labelled_images, parse_image_labels, report_matches
from instructions.records import COLUMNS, Record, TaskMix, mix_records
from instructions.reports import Report
from instructions.splits import SplitConfig, patient_splits
from instructions.vqa import synthesize_vqa


@pytest.fixture(scope="module")
def openi_reports() -> list[Report]:
    return list(read_openi(limit=400))


def test_vqa_answers_agree_with_labels(openi_reports: list[Report]) -> None:
    cues = filter_cues()
    kinds: set[str] = set()
    answers = {"Yes.": 1, "No.": 0, "Possibly.": -1}
    for report in FilterPipeline(stage1_rules())(openi_reports):
        text = report.text()
        labels = label_report(text)
        pairs = synthesize_vqa(extract_findings(text), report.impression, random.Random(1))
        assert pairs == synthesize_vqa(extract_findings(text), report.impression, random.Random(1))
        yes = sum(p.kind == "presence" and p.answer.startswith("Yes.") for p in pairs)
        no = sum(p.kind == "presence" and p.answer.startswith("No.") for p in pairs)
        assert no <= max(yes + sum(p.answer.startswith("Possibly.") for p in pairs), 2)
        for pair in pairs:
            kinds.add(pair.kind)
            assert pair.question.strip() and pair.answer.strip()
            assert not cues["prior_comparison"].search(pair.answer) or pair.kind == "open"
            if pair.kind == "presence":
                prefix = pair.answer.split()[0]
                assert labels.get(pair.label) == answers[prefix], (pair, labels)
            if pair.kind in ("location", "severity"):
                assert labels.get(pair.label) == 1
            if pair.kind == "normal":
                stated = [v for k, v in labels.items() if k not in NOT_ABNORMAL]
                assert pair.answer == ("No." if 1 in stated else "Yes."), (pair, labels)
                assert -1 not in stated or 1 in stated
        assert len(pairs) <= 8
    assert {"presence", "location", "severity", "open", "normal"} <= kinds


def test_the_normal_question_answers_from_the_reports_findings() -> None:
    def normal_answers(text: str, max_pairs: int = 8) -> list[str]:
        pairs = synthesize_vqa(extract_findings(text), text, random.Random(0), max_pairs)
        assert len(pairs) <= max_pairs
        return [p.answer for p in pairs if p.kind == "normal"]

    assert normal_answers("No acute cardiopulmonary abnormality.") == ["Yes."]
    assert normal_answers("Small right pleural effusion.") == ["No."]
    assert normal_answers("Left basilar opacity, possibly atelectasis.") == ["No."]
    assert normal_answers("Possible small left pleural effusion.") == []
    assert normal_answers("Right PICC line in place. Lungs are clear.") == ["Yes."]
    many = "Cardiomegaly. Left pleural effusion. Right pleural effusion. Edema. Atelectasis."
    assert normal_answers(many, max_pairs=3) == ["No."]


def test_vqa_never_invents_negatives() -> None:
    findings = extract_findings("Small right pleural effusion.")
    pairs = synthesize_vqa(findings, "Small right pleural effusion.", random.Random(0))
    assert {p.label for p in pairs if p.kind == "presence"} == {"Pleural Effusion"}
    where = [p.answer for p in pairs if p.kind == "location"]
    assert where == ["On the right."]
    assert [p.answer for p in pairs if p.kind == "severity"] == ["Small."]


def test_task_mix_follows_shares_without_repeats() -> None:
    def records(task: str, n: int) -> list[Record]:
        return [
            Record(f"{task}{i}", task, "i", "", "r", "", "p", "{}", "s", "train", "r")
            for i in range(n)
        ]

    pools = {
        "cxr_to_report": records("cxr_to_report", 300),
        "report_to_cxr": records("report_to_cxr", 300),
        "vqa": records("vqa", 1000),
        "text": records("text", 50),
    }
    chosen, summary = mix_records(pools, TaskMix(30, 30, 20, 20), random.Random(0))
    achieved = summary["achieved"]
    assert achieved == {
        "cxr_to_report": 75,
        "report_to_cxr": 75,
        "vqa": 50,
        "text": 50,
    }  # text is the bottleneck
    assert len({r.id for r in chosen}) == len(chosen) == 250
    _, capped = mix_records(pools, TaskMix(1, 1, 0, 0), random.Random(0), max_records=10)
    assert capped["achieved"] == {"cxr_to_report": 5, "report_to_cxr": 5, "vqa": 0, "text": 0}
    with pytest.raises(ValueError, match="4 numbers"):
        TaskMix.parse("1,2")
    with pytest.raises(ValueError, match="non-negative"):
        TaskMix(0, 0, 0, 0)


def test_splits_by_patient() -> None:
    config = SplitConfig(0.2, 0.2)
    assigned = [config.assign(f"patient{i}") for i in range(500)]
    assert {"train", "val", "test"} == set(assigned)
    assert assigned == [config.assign(f"patient{i}") for i in range(500)]
    assert config.assign("anyone", "test") == "test"
    assert patient_splits({"a": {"train", "test"}}, config) == {"a": "test"}
    with pytest.raises(ValueError, match="< 1"):
        SplitConfig(0.5, 0.5)


def _records(results, stage: int) -> list[Record]:
    return [r for recs in results[stage].records.values() for r in recs]


def test_two_stages_subset_contract_and_no_patient_leak(openi_reports: list[Report]) -> None:
    results = build_dataset(openi_reports, BuildConfig(split=SplitConfig(0.2, 0.2)))
    stage1, stage2 = _records(results, 0), _records(results, 1)
    assert stage1 and stage2
    assert results[1].source_report_ids <= results[0].source_report_ids
    assert len(results[1].source_report_ids) < len(results[0].source_report_ids)
    assert {r.report_id for r in stage2} <= results[1].source_report_ids
    for records in (stage1, stage2):
        split_of: dict[str, str] = {}
        for record in records:
            assert split_of.setdefault(record.patient_id, record.split) == record.split
            if record.task in ("cxr_to_report", "vqa"):
                assert record.input == IMAGE_PLACEHOLDER and record.image_id
            elif record.task == "report_to_cxr":
                assert (
                    record.response == IMAGE_PLACEHOLDER and IMAGE_PLACEHOLDER not in record.input
                )
            else:
                assert (
                    IMAGE_PLACEHOLDER not in record.input + record.response and not record.image_id
                )
            assert set(json.loads(record.labels)) <= set(CHEXPERT_CLASSES)
    directions: dict[str, set[str]] = {}
    for record in stage1:
        if record.task in ("cxr_to_report", "report_to_cxr"):
            directions.setdefault(record.image_id, set()).add(record.task)
    assert directions and all(len(tasks) == 1 for tasks in directions.values())
    by_id = {r.report_id: r for r in openi_reports}
    for record in stage2:  # stage 2 reports are impressions only
        if record.task == "cxr_to_report":
            assert record.response and by_id[record.report_id].findings not in record.response
    again = build_dataset(openi_reports, BuildConfig(split=SplitConfig(0.2, 0.2)))
    assert _records(again, 0) == stage1


def test_cli_builds_openi_end_to_end(tmp_path: Path) -> None:
    from datasets import load_from_disk

    out = tmp_path / "openi"
    assert (
        main(["--source", "openi", "--limit", "60", "--out", str(out), "--val-fraction", "0.2"])
        == 0
    )
    for stage in ("stage1", "stage2"):
        dataset = load_from_disk(str(out / stage))
        assert set(dataset) == {"train", "val", "test"}
        assert tuple(dataset["train"].column_names) == COLUMNS
        assert all(dataset["train"].features[c].dtype == "string" for c in COLUMNS)
        assert len(dataset["train"]) > 0
    images = [json.loads(line) for line in (out / "images.jsonl").read_text().splitlines()]
    assert images and set(images[0]) == {"image_id", "path", "patient_id", "view", "split"}
    test_ids = set(load_from_disk(str(out / "stage1"))["test"]["image_id"]) - {""}
    assert test_ids and test_ids <= {i["image_id"] for i in images if i["split"] == "test"}
    assert PromptFormat.load(out / "prompt_format.json") == PromptFormat()
    card = json.loads((out / "card.json").read_text())
    assert card["stages"]["stage1"]["filters"]["steps"][0]["name"] == "strip_deid_marks"
    assert sum(card["stages"]["stage1"]["records"].values()) == sum(
        len(load_from_disk(str(out / "stage1"))[s]) for s in ("train", "val", "test")
    )
    assert "stage2" in (out / "README.md").read_text()
    assert main(["--source", "csv", "--out", str(tmp_path / "x")]) == 2


def test_pairing_rules() -> None:
    assert parse_image_labels("Effusion|Mass") == ["effusion", "mass"]
    assert parse_image_labels("COVID-19 (folder covid19)") == ["covid-19"]
    effusion, lesion = ["Pleural Effusion"], ["Lung Lesion"]
    assert report_matches(frozenset({"Pleural Effusion", "Lung Lesion"}), False, [effusion, lesion])
    assert not report_matches(frozenset({"Pleural Effusion"}), False, [effusion, lesion])
    assert not report_matches(frozenset({"Pleural Effusion", "Cardiomegaly"}), False, [effusion])
    assert report_matches(frozenset(), True, [[]]) and not report_matches(frozenset(), False, [[]])
    covid = ["Pneumonia", "Lung Opacity", "Consolidation"]
    assert report_matches(frozenset({"Lung Opacity"}), False, [covid])


def test_pairing_needs_the_impression_to_fit_too(tmp_path: Path, fixtures_dir: Path) -> None:
    """Stage 2 trains on the impression alone: findings that describe an opacity under an
    impression that calls the film normal must not be paired with a COVID-19 image."""
    folder = tmp_path / "covidlike"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "c.png").write_bytes((fixtures_dir / "00000001_000.png").read_bytes())
    (folder / "labels.csv").write_text("filename,labels\nc.png,COVID-19\n")

    def report(report_id: str, findings: str, impression: str) -> Report:
        sections = {"FINDINGS": findings, "IMPRESSION": impression}
        return Report(report_id, report_id, "openi", sections)

    opacity = "There is a patchy airspace opacity in the right lower lobe."
    misleading = report("CXR1", opacity, "No focal airspace consolidation.")
    fitting = report("CXR2", opacity, "Right lower lobe pneumonia.")
    split = SplitConfig(0.0, 0.0)
    studies, _ = pair_labelled_images(
        [folder], split=split, openi_reports=[misleading, fitting], near_duplicate_distance=None
    )
    (study,) = studies
    assert [r.report_id for r in study.pool.reports] == ["CXR2"]
    assert study.report_id.endswith("~CXR2")
    studies, summary = pair_labelled_images(
        [folder], split=split, openi_reports=[misleading], near_duplicate_distance=None
    )
    assert not studies and summary["covidlike"]["no matching report"] == 1


def test_paired_source_matches_labels_and_keeps_splits(
    tmp_path: Path, fixtures_dir: Path, openi_reports: list[Report]
) -> None:
    folder = tmp_path / "nihlike"
    (folder / "images").mkdir(parents=True)
    rows = ["filename,labels,view,patient_id"]
    sources = ["00000001_000.png", "00027426_000.png", "16747_3_1.jpg"]
    labels = ["Cardiomegaly", "No Finding", "Effusion", "Emphysema"]
    for i, name in enumerate(labels):
        data = (fixtures_dir / sources[i % 3]).read_bytes() + bytes(
            [i]
        )  # distinct files (dedup is by hash)
        (folder / "images" / f"img{i}.png").write_bytes(data)
        rows.append(f"img{i}.png,{name},PA,{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    split = SplitConfig(0.3, 0.3)
    studies, summary = pair_labelled_images(
        [folder], seed=0, split=split, openi_reports=openi_reports
    )
    assert summary["nihlike"]["label without a CheXpert class"] == 1
    assert len(studies) == summary["nihlike"].get("paired", 0) >= 2
    openi_ids = {r.report_id for r in openi_reports}
    for study in studies:
        (image,) = study.images
        wanted = {
            "img0.png": {"Cardiomegaly"},
            "img1.png": set(),
            "img2.png": {"Pleural Effusion"},
        }[image.image_id.split("/")[1]]
        report_id = study.report_id.split("~")[1]
        assert split.assign(report_id) == split.assign(study.patient_id)
        labels_now = label_report(study.text())
        positives = {
            k
            for k, v in labels_now.items()
            if v == 1 and k not in ("No Finding", "Support Devices")
        }
        assert positives == wanted and report_id in openi_ids
    studies_again, _ = pair_labelled_images(
        [folder], seed=0, split=split, openi_reports=openi_reports
    )
    assert [s.report_id for s in studies_again] == [s.report_id for s in studies]


def test_llm_vqa_output_is_parsed_and_validated() -> None:
    from instructions.vqa_llm import LLMQAStats, llm_qa, load_generator, parse_qa_output

    answer = (
        "Here you go: "
        '[{"question": "Is there a pleural effusion?", "answer": "Yes, a small one on the left."}, '
        '{"question": "What is the capital of France?", "answer": "Paris"}, '
        '{"question": "Is the effusion larger than on the prior study?", "answer": "Yes"}, '
        '{"question": "", "answer": "Cardiomegaly."}, "stray"]'
    )
    prompts: list[str] = []

    def fake(prompt: str) -> str:
        prompts.append(prompt)
        return answer

    stats = LLMQAStats()
    pairs = llm_qa("Small left pleural effusion.", fake, stats=stats)
    assert [(p.question, p.kind) for p in pairs] == [("Is there a pleural effusion?", "llm")]
    assert "Small left pleural effusion." in prompts[0]
    assert stats.dropped == {
        "off topic": 1,
        "about priors or plans": 1,
        "empty question or answer": 1,
        "not an object": 1,
    }
    assert parse_qa_output("no json here", stats) == [] and stats.dropped["no JSON list"] == 1
    with pytest.raises(FileNotFoundError, match="not found"):
        load_generator("/nonexistent/model")


def test_general_instructions_join_the_text_task(openi_reports: list[Report]) -> None:
    rows = [
        {"instruction": "Name a primary colour.", "context": "", "response": "Red."},
        {"instruction": "Translate 'chat' from French.", "input": "chat", "output": "Cat."},
        {"instruction": "", "output": "dropped: no instruction"},
    ]
    split = SplitConfig(0.0, 0.0)
    with_general = build_dataset(
        openi_reports[:20], BuildConfig(general_instructions=rows, split=split)
    )
    without = build_dataset(openi_reports[:20], BuildConfig(split=split))
    pool = with_general[0].mix["train"]["pool"]["text"]
    assert pool == without[0].mix["train"]["pool"]["text"] + 2
    everything = BuildConfig(
        general_instructions=rows,
        split=split,
        stages=(StageConfig("all_text", [], TaskMix(0, 0, 0, 1)),),
    )
    (only_text,) = build_dataset(openi_reports[:20], everything)
    general = [r for r in only_text.records["train"] if r.source == "general"]
    assert sorted(r.response for r in general) == ["Cat.", "Red."]
    assert all(r.task == "text" and not r.image_id and r.patient_id == "" for r in general)


def test_rebuild_swaps_stages_in_only_when_all_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    import instructions.build

    out = tmp_path / "openi"
    argv = ["--source", "openi", "--limit", "40", "--out", str(out), "--val-fraction", "0.2"]
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
    finally:
        os.umask(old)
    for name in ("images.jsonl", "card.json", "prompt_format.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    assert stat.S_IMODE((out / "stage1").stat().st_mode) == 0o755
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real = instructions.build._save_stage

    def stage2_fails(result: object, folder: Path) -> Path:
        if result.name == "stage2":
            raise OSError("disk full")
        return real(result, folder)

    monkeypatch.setattr(instructions.build, "_save_stage", stage2_fails)
    with pytest.raises(OSError, match="disk full"):
        main([*argv[:3], "30", *argv[4:]])
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old dataset is whole: no new stage1, no staging folders left
