"""The tiny two-stage config through the real entry point: loss falls, stage 2 starts from stage
1."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from llm_fixtures import tiny_run_args

from llmcxr.base_model import BaseModelSpec, TinyLMConfig
from llmcxr.data import InstructionDataModule
from llmcxr.lit_module import LLMCXRModule, ModelSettings
from llmcxr.model_folder import load_model_folder
from llmcxr.train import cli_main, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "llmcxr"
FAST = ["--trainer.enable_progress_bar=false", "--trainer.check_val_every_n_epoch=1000"]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_run")
    assert main(["fit", *tiny_run_args(root), "--trainer.max_steps=12", *FAST]) == 0
    return root


def _mean_loss(model: torch.nn.Module, module: LLMCXRModule, root: Path) -> float:
    data = InstructionDataModule(str(root / "data"), stage="stage1", build_cache=False)
    data.attach(module.record_encoder(), module.image_tokenizer_path)
    data.setup("fit")
    with torch.no_grad():
        losses = [model(**batch).loss for batch in data._loader("train", shuffle=False)]
    return float(torch.stack(losses).mean())


def test_stage1_writes_checkpoint_and_model_and_loss_falls(stage1: Path) -> None:
    # --trainer.default_root_dir alone moved logs, checkpoints and the model folder.
    run = stage1 / "stage1"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "logs", "model"]
    assert (run / "logs" / "version_0" / "metrics.csv").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    folder = run / "model"
    assert (folder / "llmcxr.json").is_file()
    start = LLMCXRModule(  # the same seeded initialisation as the run's first step
        image_tokenizer=str(stage1 / "image_tokenizer"),
        model=ModelSettings(base=BaseModelSpec(tiny=TinyLMConfig())),
    )
    trained = load_model_folder(folder).model
    before, after = (
        _mean_loss(start.model.eval(), start, stage1),
        _mean_loss(trained, start, stage1),
    )
    assert after < 0.85 * before, (before, after)


def test_checkpoint_loads_like_the_exported_folder(stage1: Path) -> None:
    from_ckpt = load_model_folder(stage1 / "stage1" / "checkpoints" / "last.ckpt")
    from_folder = load_model_folder(stage1 / "stage1" / "model")
    ids = torch.tensor(
        [[3, 40, from_folder.token_map.start_id, from_folder.token_map.first_code_id]]
    )
    with torch.no_grad():
        assert torch.equal(from_ckpt.model(ids).logits, from_folder.model(ids).logits)
    assert from_ckpt.token_map == from_folder.token_map


def test_stage2_starts_from_stage1_weights_and_trains(stage1: Path) -> None:
    stage1_model = load_model_folder(stage1 / "stage1" / "model").model
    start = LLMCXRModule(init_from=str(stage1 / "stage1" / "model"))
    for (name, a), (_, b) in zip(stage1_model.named_parameters(), start.model.named_parameters()):
        assert torch.equal(a, b), name
    assert main(["fit", *tiny_run_args(stage1, stage=2), "--trainer.max_steps=2", *FAST]) == 0
    stage2 = load_model_folder(stage1 / "stage2" / "model")
    assert stage2.manifest["training"]["init_from"].endswith("stage1/model")
    emb1 = stage1_model.get_input_embeddings().weight
    assert not torch.equal(emb1, stage2.model.get_input_embeddings().weight)


def test_training_from_a_float16_export_starts_in_float32(stage1: Path, tmp_path: Path) -> None:
    """An fp16 model folder (what `llmcxr export llm --dtype float16` writes) is trained in fp32:
    fp16 weights would make a `32-true` CPU run compute in fp16, many times slower."""
    from llmcxr.cli import main as llmcxr_main

    out = tmp_path / "fp16"
    ckpt = stage1 / "stage1" / "checkpoints" / "last.ckpt"
    assert (
        llmcxr_main(
            ["export", "llm", "--checkpoint", str(ckpt), "--out", str(out), "--dtype", "float16"]
        )
        == 0
    )
    assert load_model_folder(out).model.dtype == torch.float16
    start = LLMCXRModule(init_from=str(out))
    assert {p.dtype for p in start.model.parameters()} == {torch.float32}


def test_init_from_a_wrong_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model not found"):
        LLMCXRModule(init_from=str(tmp_path / "missing"))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_parse(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli_main(["fit", "-c", str(CONFIGS / name), "--print_config"])
    assert done.value.code in (0, None)
    assert "model:" in capsys.readouterr().out


def test_export_command_writes_a_loadable_fp16_folder(stage1: Path, tmp_path: Path) -> None:
    ckpt = stage1 / "stage1" / "checkpoints" / "last.ckpt"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "m"),
                "--dtype",
                "float16",
            ]
        )
        == 0
    )
    parts = load_model_folder(tmp_path / "m")
    assert parts.model.get_input_embeddings().weight.dtype == torch.float16
    assert parts.manifest["training"]["exported_from"] == str(ckpt)


def test_export_command_rejects_a_foreign_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "vqgan.ckpt"
    torch.save({"state_dict": {}, "vqgan_config": {}}, foreign)
    assert main(["export", "--checkpoint", str(foreign), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("llmcxr: error:")
    assert "not an llmcxr training checkpoint" in err[0]


@pytest.mark.parametrize("name", ["../escaped.pth", "ABSOLUTE", "sub/tokenizer.json", "x.pth"])
def test_crafted_checkpoint_tokenizer_names_write_nothing(
    stage1: Path, tmp_path: Path, name: str
) -> None:
    """Tokenizer file names inside a checkpoint become paths: a crafted name must be refused
    before anything is written, wherever it points."""
    ckpt = torch.load(
        stage1 / "stage1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    target = tmp_path / "planted" / "escaped.pth"
    target.parent.mkdir()
    if name == "ABSOLUTE":
        name = str(target)
    ckpt["llmcxr"]["text_tokenizer"][name] = "import os  # runs at interpreter start"
    crafted = tmp_path / "planted" / "crafted.ckpt"
    torch.save(ckpt, crafted)
    escaped = Path(tempfile.gettempdir(), "escaped.pth")  # where "../escaped.pth" would land
    escaped.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="refusing text-tokenizer file"):
        load_model_folder(crafted)
    assert sorted(p.name for p in target.parent.iterdir()) == ["crafted.ckpt"]
    assert not escaped.exists()


def test_fit_resumes_from_ckpt_path_after_a_kill(stage1: Path, tmp_path: Path) -> None:
    """As after a kill: the last complete checkpoint plus a half-written one beside it. Resuming
    continues the step count and the optimizer state instead of starting over (one more epoch of
    3 batches: checkpoints are written at epoch ends)."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(stage1, root)
    last = root / "stage1" / "checkpoints" / "last.ckpt"
    (last.parent / ".last.ckpt.partial").write_bytes(last.read_bytes()[:1000])
    killed = torch.load(last, map_location="cpu", weights_only=True)
    assert killed["global_step"] == 12
    resume = ["fit", *tiny_run_args(root), "--trainer.max_steps=15", *FAST]
    assert main([*resume, "--ckpt_path", str(last)]) == 0
    # The copied run lives in another folder than the checkpoint's, so Lightning versions the name.
    resumed = torch.load(last.with_name("last-v1.ckpt"), map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 15
    steps = {int(s["step"]) for s in resumed["optimizer_states"][0]["state"].values()}
    assert steps == {15}  # AdamW went on from its saved moments, not from scratch
    assert (
        resumed["llmcxr"]["image_tokenizer_fingerprint"]
        == killed["llmcxr"]["image_tokenizer_fingerprint"]
    )


def test_a_checkpoint_with_another_image_tokenizer_is_refused(stage1: Path, tmp_path: Path) -> None:
    ckpt = torch.load(
        stage1 / "stage1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    found = ckpt["llmcxr"]["image_tokenizer_fingerprint"]
    ckpt["llmcxr"]["image_tokenizer_fingerprint"] = "0123456789abcdef"
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    both = f"fingerprint {found}, but the model was trained with 0123456789abcdef"
    with pytest.raises(ValueError, match=both):
        load_model_folder(other)
    args = ["fit", *tiny_run_args(tmp_path / "resume"), "--trainer.max_steps=14", *FAST]
    with pytest.raises(ValueError, match=both):
        main([*args, "--ckpt_path", str(other)])
