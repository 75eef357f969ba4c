"""The GPU training kit: checked parts, the return limits, the time-fitted schedule, and the whole
pack -> device commands -> unpack -> CLI path on this CPU with tiny budgets (the dry run)."""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from llmcxr.gpu_kit.dry_run import dry_run, returned_problems
from llmcxr.gpu_kit.limits import MIB, DeviceLimits
from llmcxr.gpu_kit.outbox import OutBox, OutBoxFull, collect
from llmcxr.gpu_kit.parts import PartError, cut, join, write_manifest
from llmcxr.gpu_kit.schedule import warmup_cosine
from llmcxr.lit_module import LossSettings
from llmcxr.model_folder import load_model_folder

SMALL = DeviceLimits(files_back=3, file_back_bytes=1000)


def _payload(tmp_path: Path, size: int = 2500) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    return path


def test_parts_join_back_and_name_a_missing_or_damaged_part(tmp_path: Path) -> None:
    from llmcxr.gpu_kit.parts import sha256_file

    payload, bundle = _payload(tmp_path), tmp_path / "gpu_bundle"
    parts = cut(payload, bundle, [1000, 1000, 1000])
    assert [p.bytes for p in parts] == [1000, 1000, 500]
    write_manifest(bundle, parts, {"payload_sha256": sha256_file(payload)})
    assert join(bundle, tmp_path / "joined.bin").read_bytes() == payload.read_bytes()

    (bundle / "send-2" / "part-2.bin").unlink()
    with pytest.raises(PartError, match="part 2 of 3 is missing.*gpu_bundle/send-2"):
        join(bundle, tmp_path / "again.bin")
    (bundle / "send-2" / "part-2.bin").write_bytes(b"0" * 1000)
    with pytest.raises(PartError, match="part 2 of 3 is damaged"):
        join(bundle, tmp_path / "again.bin")


def test_outbox_cuts_big_results_replaces_old_ones_and_refuses_too_many(tmp_path: Path) -> None:
    box = OutBox(tmp_path / "out", SMALL)
    big = _payload(tmp_path, 1800)
    assert [p.name for p in box.put_file("model", big)] == [
        "model.part1-of-2",
        "model.part2-of-2",
    ]
    small = tmp_path / "logs.tar.gz"
    small.write_bytes(b"log")
    box.put_file("logs", small)
    with pytest.raises(OutBoxFull, match="needs 1 file"):
        box.put_file("extra", small)
    box.put_file("newer", small, replaces=("model",))
    assert box.names() == {"logs", "newer"} and not returned_problems(box.folder, SMALL)

    box.put_file("model", big, replaces=("newer",))
    joined = collect(box.folder, tmp_path / "back")
    assert joined["model"].read_bytes() == big.read_bytes()
    assert joined["logs"].read_bytes() == b"log"


def test_warmup_cosine_rises_then_falls_to_its_floor() -> None:
    factors = [warmup_cosine(s, warmup=4, total=20, min_ratio=0.1) for s in range(25)]
    assert factors[0] == pytest.approx(0.25) and factors[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[3:]))
    assert factors[20] == pytest.approx(0.1) and factors[24] == pytest.approx(0.1)


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory):
    return dry_run(tmp_path_factory.mktemp("gpu_kit_dry_run"))


def test_dry_run_sends_parts_within_the_command_limit(dry) -> None:
    commands = dry.plan["commands"]
    assert len(commands) == 3
    assert all(c["bytes"] <= 64 * MIB and len(c["carry"]) == 1 for c in commands)
    assert commands[0]["command"].startswith("bash scripts/gpu/receive.sh gpu_bundle 1")
    assert commands[-1]["command"].startswith("bash scripts/gpu/train.sh gpu_bundle")


def test_dry_run_returns_every_phase_within_the_return_limits(dry) -> None:
    assert 1 <= len(dry.returned) <= 8
    assert all(p.stat().st_size <= 16 * MIB for p in dry.returned)
    statuses = {name: phase["status"] for name, phase in dry.report["phases"].items()}
    assert statuses == dict.fromkeys(
        ("llm_stage1", "llm_stage2", "classifier", "tokenizer", "token_cache"), "done"
    )
    names = {p.name.split(".")[0] for p in dry.returned}
    assert names == {"logs", "model", "classifier", "tokenizer", "image_tokens"}


def test_dry_run_logs_per_task_validation_loss_and_the_fitted_schedule(dry) -> None:
    metrics = dry.model.parent / "logs" / "runs" / "stage1" / "logs" / "version_0" / "metrics.csv"
    with metrics.open() as handle:
        columns = set(next(csv.reader(handle)))
    assert {"val/loss", "val/loss_image", "val/loss_text", "schedule/planned_steps"} <= columns


def test_dry_run_returns_each_llm_stages_step_profile(dry) -> None:
    # stage 1 (8 steps) ends after the profiled steps 3-4; stage 2 (4 steps) ends inside them
    for stage, steps in (("stage1", 2), ("stage2", 1)):
        folder = dry.model.parent / "logs" / "runs" / stage / "logs" / "version_0"
        with (folder / "profile_summary.csv").open() as handle:
            (summary,) = list(csv.DictReader(handle))
        assert int(summary["steps"]) == steps
        assert float(summary["wall_s_per_step"]) > 0
        assert (folder / "profile_ops.csv").stat().st_size > 0


def test_dry_run_model_loads_and_answers_the_cli(dry) -> None:
    manifest = json.loads((dry.model / "llmcxr.json").read_text())
    assert manifest["training"]["init_from"] == "runs/stage1/model"
    assert load_model_folder(dry.model).token_map.tokens_per_image == 16
    assert json.loads(dry.report_text)
    assert dry.image.stat().st_size > 0


def test_an_llm_only_dry_run_trains_both_stages_and_returns_no_image_results(
    tmp_path: Path,
) -> None:
    # the next window's bundle (docs/gpu_training.md, section 0): no labelled images packed
    run = dry_run(tmp_path, llm_only=True)
    statuses = {name: phase["status"] for name, phase in run.report["phases"].items()}
    assert statuses["llm_stage1"] == statuses["llm_stage2"] == "done"
    assert not {"classifier", "tokenizer", "token_cache"} & {
        name for name, status in statuses.items() if status == "done"
    }
    assert {p.name.split(".")[0] for p in run.returned} == {"logs", "model"}
    assert load_model_folder(run.model).token_map.tokens_per_image == 16


def test_a_dry_run_continuing_a_model_folder_trains_one_phase_from_it(tmp_path: Path) -> None:
    # pack --continue-from (docs/gpu_training.md, section 0): the LLM lane continues the packed
    # model folder, as the next window continues the shipped default model
    from safetensors.torch import load_file

    run = dry_run(tmp_path, llm_only=True, continue_model=True)
    statuses = {name: phase["status"] for name, phase in run.report["phases"].items()}
    assert statuses == {"llm_continue": "done"}
    assert {p.name.split(".")[0] for p in run.returned} == {"logs", "model"}
    manifest = json.loads((run.model / "llmcxr.json").read_text())
    # the packed copy (the seed lies outside the project), as the driver passes it
    assert manifest["training"]["init_from"].endswith("gpu_bundle/work/continue_from")
    # the window's loss settings (gpu_continue.yaml), mirrored by the dry run, reach the training
    configs = Path(__file__).resolve().parents[1] / "configs" / "llmcxr"
    real, dry = (
        yaml.safe_load((configs / name).read_text())["model"]["loss"]
        for name in ("gpu_continue.yaml", "gpu_dryrun_continue.yaml")
    )
    assert real["film_contrast_weight"] > 0 and real == dry
    # and its randomised-histogram reading: packed caches the dry run's training read
    real_seeds, dry_seeds = (
        yaml.safe_load((configs / name).read_text())["data"]["film_histogram_seeds"]
        for name in ("gpu_continue.yaml", "gpu_dryrun_continue.yaml")
    )
    assert real_seeds and real_seeds == dry_seeds  # "done" above: it read them
    # the manifest records every loss setting; those the configs leave out keep their defaults
    assert manifest["training"]["loss"] == asdict(LossSettings(**real))
    # the tiny base is not reproducible, so both folders store merged weights, not an adapter
    seed, continued = (
        {
            k: v
            for part in sorted((m / "llm").rglob("*.safetensors"))
            for k, v in load_file(part).items()
        }
        for m in (tmp_path / "seed_model" / "model", run.model)
    )
    assert seed
    assert seed.keys() == continued.keys()
    assert all(seed[k].shape == continued[k].shape for k in seed)
    assert any(not (seed[k] == continued[k]).all() for k in seed)  # it trained from the seed


def test_pack_refuses_a_model_to_continue_that_the_token_cache_does_not_fit(
    tmp_path: Path,
) -> None:
    from llmcxr.gpu_kit.dry_run import tiny_inputs
    from llmcxr.gpu_kit.pack import pack

    dataset, tokenizer = tiny_inputs(tmp_path)
    model = tmp_path / "other_model"
    model.mkdir()
    old_part = tmp_path / "bundle" / "send-1" / "part"
    old_part.parent.mkdir(parents=True)
    old_part.write_bytes(b"a packed part")
    manifests = [
        (None, FileNotFoundError, "llmcxr.json not found"),
        (json.dumps({"image_tokenizer_fingerprint": "0123"}), ValueError, "image tokenizer 0123"),
        ("[1, 2", ValueError, "not a model folder's manifest"),
    ]
    for text, error, message in manifests:
        if text is not None:
            (model / "llmcxr.json").write_text(text)
        with pytest.raises(error, match=message):
            pack(dataset, tmp_path / "bundle", image_tokenizer=tokenizer, continue_from=model)
    assert old_part.read_bytes() == b"a packed part"  # a refused pack keeps the old bundle


def test_pack_finds_a_folder_in_the_checkout_only_when_git_tracks_it(tmp_path: Path) -> None:
    # a device command sends tracked files: an untracked or ignored folder must travel in the
    # payload instead (e.g. a model folder under runs/)
    import subprocess

    from llmcxr.gpu_kit.pack import _place

    project, staging = tmp_path / "project", tmp_path / "staging"
    for name in ("tracked", "untracked"):
        (project / name).mkdir(parents=True)
        (project / name / "weights").write_text(name)
    staging.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "tracked"], cwd=project, check=True)
    assert _place(project / "tracked", project, staging, "a") == {"project": "tracked"}
    assert _place(project / "untracked", project, staging, "b") == {"payload": "b"}
    assert (staging / "b" / "weights").read_text() == "untracked"
    assert not (staging / "a").exists()
