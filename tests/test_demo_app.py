"""Demo handlers without a browser: inputs, errors shown as gr.Error, serialised model access."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from demo_requirements import missing_modules, require
from PIL import Image

require(missing_modules("gradio"))

from demo_fake_model import FakeLLMCXR

from llmcxr.demo.actions import DemoActions, DemoLimits
from llmcxr.demo.app import DemoCallbacks, build_demo, chat_messages, gr
from llmcxr.demo.findings import highlight_findings, label_rows, split_sentences
from llmcxr.model_folder import GenerationDefaults


@pytest.fixture
def callbacks(tmp_path: Path) -> DemoCallbacks:
    return DemoCallbacks(DemoActions(FakeLLMCXR(), tmp_path / "out", DemoLimits(max_images=3)))


@pytest.fixture
def corrupt_png(tmp_path: Path) -> Path:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return path


def test_upload_reads_png_jpeg_and_dicom(callbacks: DemoCallbacks, fixtures_dir: Path) -> None:
    for name in ("00000001_000.png", "16747_3_1.jpg", "synthetic_cxr_mono1.dcm"):
        preview = callbacks.preview(str(fixtures_dir / name))
        assert preview.dtype == np.uint8 and preview.ndim == 2 and preview.std() > 0, name


def test_corrupt_upload_is_a_clear_page_error(callbacks: DemoCallbacks, corrupt_png: Path) -> None:
    with pytest.raises(gr.Error, match="Cannot read broken.png"):
        callbacks.preview(str(corrupt_png))
    with pytest.raises(gr.Error, match="Cannot read broken.png"):
        callbacks.report(str(corrupt_png), True, 1.0, 0.92, 0)


def test_report_without_upload_asks_for_one(callbacks: DemoCallbacks) -> None:
    with pytest.raises(gr.Error, match="Upload a chest X-ray first"):
        callbacks.report(None, True, 1.0, 0.92, 0)


def test_report_passes_settings_and_highlights(
    callbacks: DemoCallbacks, fixtures_dir: Path
) -> None:
    path = str(fixtures_dir / "00000001_000.png")
    highlight, rows, text = callbacks.report(path, False, 0.7, 0.5, 3)
    model = callbacks.actions.model
    assert model.calls[-1] == (
        "report",
        {"do_sample": False, "temperature": 0.7, "top_p": 0.5, "seed": 3},
    )
    assert text.startswith("Mean brightness")
    spans = [(item["token"], item["class_or_confidence"]) for item in highlight.value]
    assert "".join(token for token, _ in spans) == text
    assert any(tag and "Effusion" in tag for _, tag in spans)
    assert set(highlight.color_map) == {tag for _, tag in spans if tag}
    assert ["Pleural Effusion", "positive"] in rows


@pytest.mark.parametrize(
    ("temperature", "top_p", "seed", "message"),
    [
        (0.0, 0.9, 0, "Temperature"),
        (1.0, 1.5, 0, "Top-p"),
        (1.0, 0.9, 1.5, "Seed"),
        (1.0, 0.9, -1, "Seed"),
    ],
)
def test_bad_sampling_settings_are_page_errors(
    callbacks: DemoCallbacks,
    fixtures_dir: Path,
    temperature: float,
    top_p: float,
    seed: float,
    message: str,
) -> None:
    with pytest.raises(gr.Error, match=message):
        callbacks.report(str(fixtures_dir / "00000001_000.png"), True, temperature, top_p, seed)
    assert callbacks.actions.model.calls == []


def test_draw_saves_pngs_and_reports_token_progress(callbacks: DemoCallbacks) -> None:
    seen: list[tuple[tuple[int, int], str]] = []

    def progress(value: tuple[int, int], desc: str, unit: str) -> None:
        seen.append((value, unit))

    gallery, files = callbacks.draw("Cardiomegaly.", 3, 1.0, 0.9, 7, progress=progress)
    assert gallery == files and len(files) == 3
    arrays = [np.asarray(Image.open(path)) for path in files]
    assert all(Path(path).suffix == ".png" for path in files)
    assert all(array.dtype == np.uint8 and array.shape == (32, 32) for array in arrays)
    assert not np.array_equal(arrays[0], arrays[1])
    assert seen[-1] == ((48, 48), "tokens") and seen[0] == ((0, 48), "tokens")
    assert callbacks.actions.model.calls[-1][1]["seed"] == 7


def test_same_seed_draws_the_same_images(callbacks: DemoCallbacks) -> None:
    first, _ = callbacks.draw("Edema.", 1, 1.0, 0.9, 5, progress=lambda *a, **k: None)
    second, _ = callbacks.draw("Edema.", 1, 1.0, 0.9, 5, progress=lambda *a, **k: None)
    assert first != second  # each request gets its own files
    assert np.array_equal(np.asarray(Image.open(first[0])), np.asarray(Image.open(second[0])))


@pytest.mark.parametrize(
    ("report", "count", "message"),
    [
        ("   ", 1, "Type a report"),
        ("Edema.", 4, "Number of images must be 1 to 3"),
        ("x" * 2001, 1, "Text too long"),
    ],
)
def test_bad_draw_requests_are_page_errors(
    callbacks: DemoCallbacks, report: str, count: int, message: str
) -> None:
    with pytest.raises(gr.Error, match=message):
        callbacks.draw(report, count, 1.0, 0.9, 0, progress=lambda *a, **k: None)


def test_chat_keeps_history(callbacks: DemoCallbacks, fixtures_dir: Path) -> None:
    path = str(fixtures_dir / "00000001_000.png")
    messages, turns, box = callbacks.ask(path, "Is there an effusion?", [])
    assert box == "" and turns == [("Is there an effusion?", "Answer 1 to: Is there an effusion?")]
    messages, turns, _ = callbacks.ask(path, " Which side? ", turns)
    assert callbacks.actions.model.calls[-1][1] == {"question": "Which side?", "history": turns[:1]}
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages == chat_messages(turns)
    with pytest.raises(gr.Error, match="Type a question"):
        callbacks.ask(path, "", turns)
    with pytest.raises(gr.Error, match="Upload a chest X-ray first"):
        callbacks.ask(None, "Any effusion?", [])


def test_model_failure_is_a_page_error(tmp_path: Path, fixtures_dir: Path) -> None:
    failing = DemoCallbacks(DemoActions(FakeLLMCXR(fail=True), tmp_path))
    with pytest.raises(gr.Error, match="model failed.*fake model failure"):
        failing.report(str(fixtures_dir / "00000001_000.png"), True, 1.0, 0.92, 0)


def test_model_calls_never_overlap(tmp_path: Path) -> None:
    class SlowModel(FakeLLMCXR):
        active = 0
        most_active = 0

        def ask(self, image, question, history=(), **generation):
            type(self).active += 1
            type(self).most_active = max(type(self).most_active, type(self).active)
            time.sleep(0.02)
            type(self).active -= 1
            return "ok"

    actions = DemoActions(SlowModel(), tmp_path)
    image = np.full((64, 64), 0.5, dtype=np.float32)
    threads = [threading.Thread(target=actions.answer, args=(image, "Q?", [])) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert SlowModel.most_active == 1


def test_sentences_split_and_rejoin() -> None:
    text = "Heart normal. Mild edema!\nNo effusion; small pneumothorax? end"
    parts = split_sentences(text)
    assert "".join(parts) == text and len(parts) == 5


def test_findings_are_labelled_per_sentence() -> None:
    spans, colours = highlight_findings("The heart is enlarged. No pneumothorax. Lungs clear.")
    tags = [tag for _, tag in spans]
    assert tags[0] is not None and "Cardiomegaly" in tags[0]
    assert tags[1] is not None and "no Pneumothorax" in tags[1]
    assert colours[tags[0]] != colours[tags[1]]
    assert ["Cardiomegaly", "positive"] in label_rows("The heart is enlarged. No pneumothorax.")


def test_page_builds_with_named_api(callbacks: DemoCallbacks, tmp_path: Path) -> None:
    demo = build_demo(FakeLLMCXR(), tmp_path)
    api_names = {dep.api_name for dep in demo.fns.values() if dep.api_name}
    assert {"report", "draw", "ask"} <= api_names
    model_events = [dep for dep in demo.fns.values() if dep.concurrency_id == "llmcxr-model"]
    assert len(model_events) == 4 and all(dep.concurrency_limit == 1 for dep in model_events)


def test_sampling_controls_start_at_the_models_defaults(tmp_path: Path) -> None:
    defaults = GenerationDefaults(temperature=0.9, top_p=0.8, report_temperature=0.3)
    demo = build_demo(FakeLLMCXR(generation_defaults=defaults), tmp_path)
    sliders = [b for b in demo.blocks.values() if isinstance(b, gr.Slider)]
    temperatures = [s.value for s in sliders if s.label == "Temperature"]
    assert temperatures == [0.3, 0.9]  # the Report tab's, then the Draw tab's
    assert [s.value for s in sliders if s.label == "Top-p"] == [0.8, 0.8]


def test_an_upload_is_decoded_once_under_the_model_lock(
    callbacks: DemoCallbacks, fixtures_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmcxr.demo.actions

    actions = callbacks.actions
    decodes: list[bool] = []
    real = llmcxr.demo.actions.read_cxr

    def spy(path: str | Path) -> np.ndarray:
        decodes.append(actions.lock.locked())
        return real(path)

    monkeypatch.setattr(llmcxr.demo.actions, "read_cxr", spy)
    upload = str(fixtures_dir / "00000001_000.png")
    copy = tmp_path / "copy.png"  # gradio may hand the same upload to another box as a copy
    copy.write_bytes(Path(upload).read_bytes())
    callbacks.preview(upload)
    callbacks.report(upload, True, 1.0, 0.92, 0)
    callbacks.preview(str(copy))
    callbacks.ask(str(copy), "Any effusion?", [])
    assert decodes == [True]
