"""`llmcxr evaluate` end to end on the tiny model and a tiny built dataset; resuming; bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from evaluation_fixtures import make_tiny_dataset
from llm_fixtures import make_tiny_model_folder

from llmcxr.evaluation.classifier import ImageClassifier
from llmcxr.evaluation.cli import main
from llmcxr.evaluation.store import ResultStore
from vqgan.clinical import (
    ClinicalFeatureExtractor,
    import_torchxrayvision,
)

CLASSIFIER_LABELS = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Edema",
    "Pneumonia",
    "Mass",
    "Nodule",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    return {
        "model": make_tiny_model_folder(root / "model"),
        "data": make_tiny_dataset(root / "data", n_test=3),
    }


@pytest.fixture
def tiny_classifier(monkeypatch: pytest.MonkeyPatch) -> str:
    """A 4-block torchxrayvision DenseNet in place of DenseNet-121 (which costs seconds per image
    on these CPUs); loading real exports is vqgan.clinical's job and tested there."""
    densenet = import_torchxrayvision().models.DenseNet(
        weights=None,
        num_classes=len(CLASSIFIER_LABELS),
        growth_rate=8,
        block_config=(1, 1, 1, 1),
        num_init_features=16,
        op_threshs=None,
    )
    extractor = ClinicalFeatureExtractor(densenet, CLASSIFIER_LABELS)
    monkeypatch.setattr(
        ImageClassifier, "from_weights", classmethod(lambda cls, w, batch_size=16: cls(extractor))
    )
    return "tiny-test-classifier"


def test_classifier_maps_labels_and_classifies(tiny_classifier: str) -> None:
    classifier = ImageClassifier.from_weights(tiny_classifier)
    columns = classifier.chexpert_columns(
        ["Pleural Effusion", "Cardiomegaly", "Lung Lesion", "Fracture"]
    )
    # NIH "Effusion"; Lung Lesion is NIH's Mass or Nodule; no Fracture
    assert columns == {"Pleural Effusion": [2], "Cardiomegaly": [1], "Lung Lesion": [5, 6]}
    probs, feats = classifier([np.full((64, 64), 0.5, dtype=np.float32)] * 3)
    assert probs.shape == (3, len(CLASSIFIER_LABELS)) and feats.shape[0] == 3
    assert ((probs > 0) & (probs < 1)).all()
    assert np.allclose(probs[0], probs[2])
    outputs = np.array([[0.1, 0.2, 0.3, 0.0, 0.0, 0.7, 0.4], [0.1, 0.2, 0.6, 0.0, 0.0, 0.1, 0.9]])
    assert ImageClassifier.class_scores(outputs, columns).tolist() == [
        [0.3, 0.2, 0.7],
        [0.6, 0.2, 0.9],
    ]


def _args(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        str(assets["model"]),
        "--data",
        str(assets["data"]),
        "--out",
        str(out),
        "--max-new-tokens",
        "8",
        "--bootstrap",
        "20",
        "--device",
        "cpu",
        *extra,
    ]


def test_evaluate_writes_metrics_table_and_plots(
    assets: dict[str, Path], tiny_classifier: str, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    code = main(
        _args(
            assets,
            out,
            "--tasks",
            "report,nih,image,vqa,roundtrip,tokenizer",
            "--classifier",
            tiny_classifier,
            "--limit",
            "2",
            "--samples-per-image",
            "2",
        )
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    report = metrics["report"]
    assert report["n_items"] == 2 and report["samples_per_image"] == 2
    assert report["min_positives"] == 5 and report["headline_classes"] == []  # 2 items: none has 5
    assert report["nlg_references_per_item"] >= 1
    assert set(report["per_label"]) >= {"Pleural Effusion", "Cardiomegaly", "No Finding"}
    assert set(report["nlg"]) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider_d"}
    # The baseline answers the training split's most common report for every image.
    assert report["baseline_most_common_report"]["report"] == "No acute cardiopulmonary process."
    # The classifier reference readers score the same 2 films against the same report labels.
    for reader in ("classifier_real", "classifier_reconstruction"):
        assert report[reader]["n_items"] == 2
        assert set(report[reader]["per_label"]) == set(report["per_label"])
    nih = metrics["nih"]  # 4 NIH test images (one without a stage record), 2 by --limit
    assert nih["n_items"] == 2 and len(nih["per_label"]) == 11
    assert nih["baseline_no_finding"]["per_label"]["No Finding"]["f1"] is not None
    for reader in ("classifier_real", "classifier_reconstruction"):
        assert nih[reader]["n_items"] == 2 and len(nih[reader]["per_label"]) == 11
    image = metrics["image"]
    assert image["classes"] == [
        "Atelectasis",
        "Cardiomegaly",
        "Edema",
        "Lung Lesion",
        "Pleural Effusion",
        "Pneumonia",
    ]
    assert (
        image["generated"]["n_items"] == 2 and image["resolution"] == 64
    )  # the tiny tokenizer's size
    assert image["fid_xrv"] is not None and image["fid_xrv"] >= 0
    realism = image["realism"]
    assert realism["n_real"] == 2 and realism["generated"]["n"] == 4
    assert realism["tokenizer_reconstruction"]["kid"] is not None
    assert realism["control"]["n"] == 2 and realism["control"]["kid"] is not None
    assert "tokenizer_reconstruction" in image and "real" in image
    assert -1 <= image["diversity_ssim"] <= 1
    near = image["nearest_real_ssim"]
    assert near["n_real"] == 2 and near["n_generated"] == 4
    assert -1 <= near["generated"] <= 1 and -1 <= near["real_leave_one_out"] <= 1
    assert -1 <= near["control"] <= 1
    low = near["lowpass"]
    assert near["lowpass_sigma"] == 2.0
    for key in ("generated", "real_leave_one_out", "control", "mean_real_image"):
        assert -1 <= low[key] <= 1
    gap = low["generated_minus_real"]
    assert gap == pytest.approx(low["generated"] - low["real_leave_one_out"])
    assert low["generated_minus_real_ci95"][0] <= gap <= low["generated_minus_real_ci95"][1]
    assert near["sharpness"]["generated"] > 0 and near["sharpness"]["real"] > 0
    assert metrics["vqa"]["n_yes_no"] + metrics["vqa"]["n_open"] == metrics["vqa"]["n_items"] == 2
    assert set(metrics["roundtrip"]) == {"report_image_report", "image_report_image"}
    assert 0 <= metrics["tokenizer"]["codebook_usage"] <= 1
    table = (out / "table.md").read_text()
    assert "Nearest real image, in pixels" in table
    assert "negative control" in table
    assert "At matched sharpness" in table
    assert "Generated minus real" in table
    for heading in (
        "CXR -> report",
        "Report -> CXR",
        "VQA",
        "Round trips",
        "LLM-CXR (paper)",
        "most common training report",
        "uncertain",
        "NIH ChestX-ray14",
        '"No Finding"',
        "Micro averages",
        "tokenizer reconstructions (ceiling)",
        "precision",
        "classifier on the real film (reference)",
    ):
        assert heading in table
    for plot in (
        "report_per_label",
        "nih_per_label",
        "image_per_label",
        "vqa_confusion",
        "real_vs_generated",
    ):
        assert (out / "plots" / f"{plot}.png").stat().st_size > 1000
    assert len(list((out / "images" / "image").glob("*.png"))) == 2 * 2


class _Interrupt(RuntimeError):
    pass


def test_interrupted_run_resumes_without_recomputing(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmcxr.pipeline import LLMCXR

    original = LLMCXR.generate_report
    calls: list[list[str]] = []
    fail_after = {"n": 2}

    def counting(self, images, **kwargs):  # one call per batch of 1 image
        if len(calls) == fail_after["n"]:
            raise _Interrupt("injected interruption")
        calls.append([str(i) for i in images])
        return original(self, images, **kwargs)

    monkeypatch.setattr(LLMCXR, "generate_report", counting)
    out = tmp_path / "eval"
    args = _args(assets, out, "--tasks", "report", "--batch-size", "1", "--samples-per-image", "1")
    with pytest.raises(_Interrupt):
        main(args)
    store_path = out / "items" / "report.jsonl"
    first_rows = ResultStore(store_path).rows
    assert len(first_rows) == 2
    # A crash in the middle of a write leaves half a line: it is dropped and redone.
    with store_path.open("a") as handle:
        handle.write('{"key": "half a ro')
    done_before = list(calls)
    fail_after["n"] = 10**6
    assert main(args) == 0
    new_calls = calls[len(done_before) :]
    assert len(new_calls) == 1  # only the third test image was generated again
    rows = ResultStore(store_path).rows
    assert len(rows) == 3
    assert all(rows[k] == first_rows[k] for k in first_rows)
    # A fully finished run reruns without loading the model at all.
    monkeypatch.setattr(LLMCXR, "from_pretrained", classmethod(lambda cls, *a, **k: 1 / 0))
    assert main(args) == 0


def test_bad_input_gives_one_line_and_exit_2(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(assets, tmp_path / "a", "--tasks", "image")) == 2
    assert "--classifier" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "missing"), "--tasks", "report"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "b"
    (out).mkdir()
    (out / "run.json").write_text(json.dumps({"model": "another"}))
    assert main(_args(assets, out, "--tasks", "report")) == 2
    assert "different run" in capsys.readouterr().err


def test_quantize_reaches_the_model_and_the_run_identity(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--quantize int8` evaluates the int8 model and is part of the run's identity, so its items
    never mix with an fp32 run's; the default leaves run.json as before the option existed."""
    from llmcxr.pipeline import LLMCXR

    seen: list[str] = []
    real = LLMCXR.from_pretrained.__func__

    def spy(cls: type[LLMCXR], *args: object, **kwargs: object) -> LLMCXR:
        llm = real(cls, *args, **kwargs)
        seen.append(llm.quantization)
        return llm

    monkeypatch.setattr(LLMCXR, "from_pretrained", classmethod(spy))
    out = tmp_path / "int8"
    assert main(_args(assets, out, "--tasks", "report", "--quantize", "int8")) == 0
    assert seen == ["int8"]
    assert json.loads((out / "run.json").read_text())["quantize"] == "int8"
    assert main(_args(assets, out, "--tasks", "report")) == 2  # an fp32 run into that folder
    plain = tmp_path / "plain"
    assert main(_args(assets, plain, "--tasks", "report")) == 0
    assert "quantize" not in json.loads((plain / "run.json").read_text())


def test_guidance_scale_reaches_every_drawing_and_the_run_identity(
    assets: dict[str, Path], tiny_classifier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--guidance-scale 2.5` draws every image and round trip with that scale, is part of the
    run's identity and is named in the table; without it the model's own scale is used (None
    reaches the pipeline) and run.json is as before the option existed."""
    from llmcxr.pipeline import LLMCXR

    seen: list[float | None] = []
    real = LLMCXR.generate_images

    def spy(self: LLMCXR, reports: list[str], **kwargs: object) -> list[list[np.ndarray]]:
        seen.append(kwargs.get("guidance_scale"))
        return real(self, reports, **kwargs)

    monkeypatch.setattr(LLMCXR, "generate_images", spy)
    out = tmp_path / "guided"
    tasks = ("--tasks", "image,roundtrip", "--classifier", tiny_classifier)
    assert main(_args(assets, out, *tasks, "--guidance-scale", "2.5")) == 0
    assert len(seen) >= 3 and set(seen) == {2.5}
    assert json.loads((out / "run.json").read_text())["guidance_scale"] == 2.5
    assert "Drawings with guidance scale 2.5" in (out / "table.md").read_text()
    assert main(_args(assets, out, *tasks)) == 2  # an unguided run into that folder
    seen.clear()
    plain = tmp_path / "plain"
    assert main(_args(assets, plain, "--tasks", "image", "--classifier", tiny_classifier)) == 0
    assert seen and set(seen) == {None}
    assert "guidance_scale" not in json.loads((plain / "run.json").read_text())
    assert "guidance scale" not in (plain / "table.md").read_text()


def test_guidance_scale_must_be_positive(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_args(assets, tmp_path / "g", "--tasks", "report", "--guidance-scale", "0")) == 2
    assert "--guidance-scale: guidance scale must be a finite number > 0" in capsys.readouterr().err


def test_subset_seed_samples_the_same_records_again(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    """`--seed 1 --subset-seed 0` scores the records `--seed 0` picks (with other samples), is
    part of the run's identity, and is named in the table; `--seed 1` alone picks others."""
    runs = {
        "seed0": ("--seed", "0"),
        "seed1_subset0": ("--seed", "1", "--subset-seed", "0"),
        "seed1": ("--seed", "1"),
    }
    ids = {}
    for name, extra in runs.items():
        out = tmp_path / name
        assert main(_args(assets, out, "--tasks", "report", "--limit", "2", *extra)) == 0
        rows = (out / "items" / "report.jsonl").read_text().splitlines()
        ids[name] = sorted(json.loads(row)["key"] for row in rows)
    assert ids["seed1_subset0"] == ids["seed0"]
    assert ids["seed1"] != ids["seed0"]
    run = json.loads((tmp_path / "seed1_subset0" / "run.json").read_text())
    assert run["subset_seed"] == 0 and run["seed"] == 1
    assert "subset seed 0, sampling seed 1" in (tmp_path / "seed1_subset0" / "table.md").read_text()
    assert "subset_seed" not in json.loads((tmp_path / "seed1" / "run.json").read_text())
    # resuming into that folder without the subset seed is another run
    assert main(_args(assets, tmp_path / "seed1_subset0", "--tasks", "report", "--seed", "1")) == 2
