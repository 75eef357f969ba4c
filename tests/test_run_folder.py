"""One run folder per config (`cxrcommon.checkpointing`): ``trainer.default_root_dir`` is named
once and logs, checkpoints and exports follow it; checkpoints appear whole or not at all."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from cxrcommon.checkpointing import AtomicModelCheckpoint
from llmcxr.gpu_kit.driver import RUN_FOLDERS
from llmcxr.gpu_kit.pack import PROFILES
from vqgan.__main__ import VQGANCLI
from vqgan.classifier import CXRClassifierModule
from vqgan.classifier_data import LabelledCXRDataModule
from vqgan.classifier_train import ClassifierCLI
from vqgan.data import CXRDataModule
from vqgan.module import VQGANModule

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*/*.yaml"))


def _fake_trainer(write) -> SimpleNamespace:
    return SimpleNamespace(
        save_checkpoint=write,
        is_global_zero=True,
        global_step=1,
        loggers=[],
        strategy=SimpleNamespace(barrier=lambda name=None: None),
    )


def test_atomic_checkpoint_never_leaves_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "epoch=0.ckpt"

    def crash(path: str, weights_only: bool = False) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise RuntimeError("killed mid-write")

    callback = AtomicModelCheckpoint(dirpath=tmp_path)
    with pytest.raises(RuntimeError, match="mid-write"):
        callback._save_checkpoint(_fake_trainer(crash), str(target))
    assert not target.exists()

    def write(path: str, weights_only: bool = False) -> None:
        Path(path).write_bytes(b"whole")

    callback._save_checkpoint(_fake_trainer(write), str(target))
    assert target.read_bytes() == b"whole" and not list(tmp_path.glob(".*.partial"))
    assert callback._last_checkpoint_saved == str(target)


def test_a_folder_checkpoint_replaces_the_old_folder_whole(tmp_path: Path) -> None:
    """Sharded strategies (DeepSpeed) save a folder: it replaces the old one, no leftovers."""
    target = tmp_path / "last.ckpt"
    target.mkdir()
    (target / "old_shard").write_text("old")

    def write_folder(path: str, weights_only: bool = False) -> None:
        Path(path).mkdir()
        (Path(path) / "shard_0").write_text("new")

    AtomicModelCheckpoint(dirpath=tmp_path)._save_checkpoint(
        _fake_trainer(write_folder), str(target)
    )
    assert sorted(p.name for p in target.iterdir()) == ["shard_0"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_checkpoints_default_to_the_run_folder_not_the_log_version(tmp_path: Path) -> None:
    callback = AtomicModelCheckpoint(save_last=True)
    logger = CSVLogger(str(tmp_path))  # Lightning would put checkpoints in its version folder
    trainer = L.Trainer(default_root_dir=str(tmp_path), callbacks=[callback], logger=logger)
    callback.setup(trainer, L.LightningModule(), "fit")
    assert callback.dirpath == str(tmp_path / "checkpoints")
    given = AtomicModelCheckpoint(dirpath=tmp_path / "elsewhere")
    given.setup(trainer, L.LightningModule(), "fit")
    assert given.dirpath == str(tmp_path / "elsewhere")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_each_config_names_its_run_folder_once(path: Path) -> None:
    """No ``save_dir`` or ``dirpath`` repeats ``trainer.default_root_dir``: an override of it
    must move logs, checkpoints and exports together."""
    config = yaml.safe_load(path.read_text())
    root = config["trainer"]["default_root_dir"]
    found = []

    def walk(node: object, key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{key}.{name}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{key}[{i}]")
        elif isinstance(node, str) and (node == root or node.startswith(f"{root}/")):
            found.append(key)
        if key.endswith((".save_dir", ".dirpath")):
            found.append(key)

    walk(config, "")
    assert found == [".trainer.default_root_dir"]


@pytest.mark.parametrize(
    ("cli", "module", "data", "config", "logs"),
    [
        (VQGANCLI, VQGANModule, CXRDataModule, "configs/vqgan/tiny.yaml", "logs"),
        (
            ClassifierCLI,
            CXRClassifierModule,
            LabelledCXRDataModule,
            "configs/classifier/tiny.yaml",
            "lightning_logs",
        ),
    ],
    ids=["vqgan", "classifier"],
)
def test_logs_and_checkpoints_follow_the_run_folder(
    cli, module, data, config: str, logs: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``--trainer.default_root_dir`` override moves the logger and the checkpoint callback
    (the LLM's CLI: tests/test_llm_train.py, which also checks the exported model)."""
    monkeypatch.chdir(REPO)  # the configs name their data relative to the repository root
    monkeypatch.setattr(sys, "argv", ["cli"])
    args = ["-c", config, f"--trainer.default_root_dir={tmp_path}"]
    trainer = cli(module, data, args=args, run=False).trainer
    assert trainer.log_dir == str(tmp_path / logs / "version_0")
    (checkpoint,) = [c for c in trainer.callbacks if isinstance(c, AtomicModelCheckpoint)]
    checkpoint.setup(trainer, L.LightningModule(), "fit")
    assert checkpoint.dirpath == str(tmp_path / "checkpoints")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_gpu_kit_reads_results_where_its_configs_write_them(profile: str) -> None:
    """The kit's driver passes each phase's run folder; the configs name the same one, so a
    config run by hand and the stage-2 ``init_from`` agree with the kit."""
    for phase, config in PROFILES[profile].configs.items():
        root = yaml.safe_load((REPO / config).read_text())["trainer"]["default_root_dir"]
        assert root == RUN_FOLDERS[phase], (config, root)
