"""The served demo over HTTP (gradio's queue API), with a fake model: errors reach the caller as
messages, the app keeps serving, and the command refuses bad arguments with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from demo_requirements import missing_modules, require

require(missing_modules("gradio"))

from demo_fake_model import FakeLLMCXR

from llmcxr.demo import main
from llmcxr.demo.app import build_demo, launch_demo


def test_served_app_reports_errors_and_keeps_running(tmp_path: Path, fixtures_dir: Path) -> None:
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    model = FakeLLMCXR()
    demo = build_demo(model, tmp_path)
    url = launch_demo(demo, block=False)
    try:
        client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
        with pytest.raises(AppError, match="Type a report to draw an X-ray from"):
            client.predict("  ", 1, 1.0, 0.92, 0, api_name="/draw")
        broken = tmp_path / "broken.jpg"
        broken.write_bytes(b"\xff\xd8\xff\xe0 truncated")
        with pytest.raises(AppError, match="Cannot read broken.jpg"):
            client.predict(handle_file(str(broken)), True, 1.0, 0.92, 0, api_name="/report")
        highlighted, labels, text = client.predict(
            handle_file(str(fixtures_dir / "00000001_000.png")),
            True,
            1.0,
            0.92,
            0,
            api_name="/report",
        )
        gallery, files = client.predict("Cardiomegaly.", 2, 1.0, 0.92, 3, api_name="/draw")
        client.close()
    finally:
        demo.close()
    assert text.startswith("Mean brightness") and "Pleural Effusion" in str(labels)
    assert "Effusion" in str(highlighted)
    assert len(gallery) == 2 and all(str(f["path"]).endswith(".png") for f in files)
    assert [name for name, _ in model.calls] == ["report", "images"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--port", "70000"], "--port must be 1-65535"), (["--max-queue", "0"], "--max-queue")],
)
def test_command_rejects_bad_arguments(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_command_names_a_missing_model(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-model"
    assert main(["--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "cannot load the model" in err and str(missing) in err


def test_command_loads_the_model_in_the_speed_mode_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from llmcxr.pipeline import LLMCXR

    asked: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        asked.append(kwargs.get("quantize"))
        raise FileNotFoundError("stop here")

    monkeypatch.setattr(LLMCXR, "from_pretrained", refuse)
    assert main(["--quantize", "int8"]) == 2
    assert asked == ["int8"]
    assert "cannot load the model: stop here" in capsys.readouterr().err
    assert main(["--quantize", "int4"]) == 2 and asked == ["int8"]
    assert "argument --quantize: invalid choice: 'int4'" in capsys.readouterr().err


def test_demo_auto_mode_stores_fp16_weights_on_a_cpu_that_has_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A demo loads once and draws many times, so "auto" means fp16 weights there."""
    from llmcxr.demo import app
    from llmcxr.devices import cpu_has_fp16_gemm
    from llmcxr.pipeline import LLMCXR

    modes: list[str] = []

    def load(*args: object, quantize: str = "auto", **kwargs: object) -> object:
        modes.append(quantize)
        return object()

    def stop(*args: object, **kwargs: object) -> None:
        raise RuntimeError("stopped after loading")

    monkeypatch.setattr(LLMCXR, "from_pretrained", load)
    monkeypatch.setattr(app, "build_demo", stop)
    with pytest.raises(RuntimeError, match="stopped after loading"):
        main([])
    # the mode goes to the loader, which loads fp32 weights for it (not bf16 ones made fp32)
    assert modes == ["fp16" if cpu_has_fp16_gemm() else "none"]
    with pytest.raises(RuntimeError, match="stopped after loading"):
        main(["--quantize", "none"])
    assert modes[1:] == ["none"]  # a mode asked for is passed on as given


def test_non_loopback_host_needs_auth_or_public(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "no-such-model")
    assert main(["--host", "0.0.0.0", "--model", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmcxr: error: --host 0.0.0.0 serves the demo")
    assert "--auth USER:PASSWORD" in err[0] and "--public" in err[0]
    # with --public or --auth it goes on (to the model, missing here) after a warning
    for extra, access in ((["--public"], "to anyone"), (["--auth", "u:p"], "behind a login")):
        assert main(["--host", "0.0.0.0", "--model", missing, *extra]) == 2
        err = capsys.readouterr().err
        assert f"llmcxr: warning: serving the demo on 0.0.0.0 {access}" in err
        assert "cannot load the model" in err
    assert main(["--host", "::1", "--model", missing]) == 2  # loopback: no flag needed
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["user", ":pw", "user:"])
def test_auth_must_be_user_and_password(value: str, capsys) -> None:
    assert main(["--auth", value]) == 2
    assert "--auth must be USER:PASSWORD" in capsys.readouterr().err


def test_served_app_with_auth_refuses_anonymous_requests(tmp_path: Path) -> None:
    from gradio_client import Client

    demo = build_demo(FakeLLMCXR(), tmp_path)
    url = launch_demo(demo, auth=("reader", "s3cret"), block=False)
    try:
        with pytest.raises(Exception, match="(?i)login|auth|401|403"):
            Client(url, verbose=False, analytics_enabled=False)
        client = Client(
            url,
            auth=("reader", "s3cret"),
            verbose=False,
            download_files=False,
            analytics_enabled=False,
        )
        gallery, _ = client.predict("Cardiomegaly.", 1, 1.0, 0.92, 3, api_name="/draw")
        client.close()
    finally:
        demo.close()
    assert len(gallery) == 1
