"""The merged-model cache (a LoRA folder merged once, then loaded from the user cache), the CLI's
imports and its quiet stderr."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llm_fixtures import tiny_vqgan_config
from safetensors.torch import load_file, save_file

from instructions.prompt_format import PromptFormat
from llmcxr import merged_cache
from llmcxr.base_model import BaseModelSpec, TinyLMConfig, build_tiny_model, load_base_model
from llmcxr.image_tokens import add_image_tokens
from llmcxr.model_folder import apply_lora, load_model_folder, save_model_folder
from llmcxr.pipeline import LLMCXR
from vqgan import CXRTokenizer

ADAPTER = Path("llm") / "adapter" / "adapter_model.safetensors"


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny LoRA model folder whose adapter (LoRA B and the new token rows) is not zero, and
    the local base folder it needs."""
    root = tmp_path_factory.mktemp("lora")
    base, tok = build_tiny_model(TinyLMConfig())
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    spec = BaseModelSpec(name=str(root / "base"))
    model, tok = load_base_model(spec)
    image_tokenizer = CXRTokenizer(tiny_vqgan_config())
    token_map = add_image_tokens(
        model, tok, image_tokenizer.codebook_size, image_tokenizer.tokens_per_image
    )
    new_ids = [*token_map.image_token_ids, token_map.start_id, token_map.end_id]
    lora = apply_lora(
        model,
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": "all-linear",
            "trainable_token_indices": {"embed_tokens": new_ids},
        },
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name or "trainable_tokens" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    folder = save_model_folder(
        root / "model",
        model=lora,
        text_tokenizer=tok,
        image_tokenizer=image_tokenizer,
        token_map=token_map,
        prompt_format=PromptFormat(),
        base_model=spec,
    )
    return folder, spec.name


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMCXR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(merged_cache.DISABLE_ENV, raising=False)
    return tmp_path / "cache"


def _ids(folder: Path) -> torch.Tensor:
    token_map = json.loads((folder / "image_tokens.json").read_text())
    return torch.tensor([[5, 9, token_map["start_id"], token_map["first_code_id"] + 7, 11]])


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def _adapter_logits(folder: Path, base: str) -> torch.Tensor:
    """Logits of the unmerged peft model: what the cached merged model must reproduce."""
    parts = load_model_folder(folder, merge_adapter=False, base_model=base)
    return _logits(parts.model, _ids(folder))


def _cached_logits(folder: Path, base: str, **kwargs: object) -> torch.Tensor:
    llm = LLMCXR.from_pretrained(folder, device="cpu", dtype="float32", base_model=base, **kwargs)
    return _logits(llm.model, _ids(folder))


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "merged").glob("*")) if (cache / "merged").is_dir() else []


def _forbid_merging(monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the adapter was loaded or merged again")

    monkeypatch.setattr(PeftModel, "from_pretrained", refuse)
    monkeypatch.setattr(BaseTuner, "merge_and_unload", refuse)


def test_the_cached_merged_model_gives_the_adapters_logits_without_merging_again(
    lora_folder: tuple[Path, str], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, base = lora_folder
    expected = _adapter_logits(folder, base)
    first = _cached_logits(folder, base)
    (entry,) = _entries(cache_dir)
    assert (entry / merged_cache.ENTRY_FILE).is_file()
    _forbid_merging(monkeypatch)
    second = _cached_logits(folder, base)
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.allclose(second, expected, atol=1e-5)
    with pytest.raises(Exception, match="loaded or merged again"):  # the bypass does merge
        _cached_logits(folder, base, cache=False)


def test_a_changed_adapter_gets_a_new_entry_with_its_own_logits(
    lora_folder: tuple[Path, str], cache_dir: Path, tmp_path: Path
) -> None:
    folder, base = lora_folder
    old = _cached_logits(folder, base)
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    tensors = load_file(changed / ADAPTER)
    name = next(k for k in tensors if "lora_B" in k)
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, changed / ADAPTER, {"format": "pt"})
    new = _cached_logits(changed, base)
    assert len(_entries(cache_dir)) == 2
    assert not torch.allclose(new, old, atol=1e-3)
    assert torch.allclose(new, _adapter_logits(changed, base), atol=1e-5)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_entry_is_rebuilt(
    lora_folder: tuple[Path, str],
    cache_dir: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder, base = lora_folder
    expected = _cached_logits(folder, base)
    (entry,) = _entries(cache_dir)
    weights = entry / "model.safetensors"
    data = weights.read_bytes()
    # a cut file fails the size check; same-size garbage fails safetensors' header parse
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * len(data))
    with caplog.at_level(logging.WARNING, logger="llmcxr.merged_cache"):
        again = _cached_logits(folder, base)
    assert "damaged" in caplog.text
    assert torch.allclose(again, expected, atol=1e-5)
    assert weights.read_bytes() == data  # rebuilt, identical


def test_an_unwritable_cache_merges_in_memory_with_one_warning(
    lora_folder: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder, base = lora_folder
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLMCXR_CACHE", str(blocker / "cache"))  # cannot be created
    with caplog.at_level(logging.WARNING, logger="llmcxr.merged_cache"):
        logits = _cached_logits(folder, base)
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1
    assert torch.allclose(logits, _adapter_logits(folder, base), atol=1e-5)


def test_bypasses_and_training_loads_write_no_entry(
    lora_folder: tuple[Path, str], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, base = lora_folder
    _cached_logits(folder, base, cache=False)
    monkeypatch.setenv(merged_cache.DISABLE_ENV, "1")
    _cached_logits(folder, base)
    monkeypatch.delenv(merged_cache.DISABLE_ENV)
    parts = load_model_folder(folder, merge_adapter=False, base_model=base)
    assert hasattr(parts.model, "peft_config")  # still the trainable adapter
    assert _entries(cache_dir) == []


_SCRIPT = """
import json, sys
from llmcxr.cli import main
status = main(sys.argv[1:])
heavy = ("torch", "transformers", "lightning", "pytorch_lightning", "gradio", "datasets", "nltk",
         "pandas", "peft", "torch._dynamo")
print(json.dumps({"status": status, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def _run_cli(*argv: str, env: dict[str, str] | None = None) -> tuple[dict, str]:
    """Run `llmcxr.cli.main(argv)` in a fresh interpreter -> (status and heavy modules, stderr)."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_help_and_argument_errors_import_no_torch() -> None:
    result, _ = _run_cli("--help")
    assert result == {"status": 0, "loaded": []}
    result, stderr = _run_cli("generate-image", "--seed", "x")
    assert result == {"status": 2, "loaded": []}
    assert "llmcxr: error:" in stderr


def test_generate_image_imports_no_training_stack_and_keeps_stderr_quiet(
    lora_folder: tuple[Path, str], tmp_path: Path
) -> None:
    """First load of a LoRA folder: base loading, adapter merge and cache build all happen, and
    stderr still shows no library warning or loading bar."""
    folder, base = lora_folder
    env = {**os.environ, "LLMCXR_CACHE": str(tmp_path / "cache")}
    env.pop(merged_cache.DISABLE_ENV, None)
    argv = [
        "generate-image",
        "lungs are clear",
        "-o",
        str(tmp_path / "x.png"),
        "--model",
        str(folder),
        "--base-model",
        base,
        "--device",
        "cpu",
        "--seed",
        "0",
    ]
    result, stderr = _run_cli(*argv, env=env)
    assert result["status"] == 0, stderr
    assert (tmp_path / "x.png").is_file()
    assert not {"lightning", "pytorch_lightning", "gradio", "datasets", "nltk"} & set(
        result["loaded"]
    )
    assert "torch" in result["loaded"]  # it did load the model
    assert "warning" not in stderr.lower() and "Loading" not in stderr, stderr
    assert _entries(tmp_path / "cache")
    first = (tmp_path / "x.png").read_bytes()
    # Cached now: the transformers-free engine draws the same image without transformers or peft,
    # nor torch._dynamo (0.8 s, pulled in by meta-device construction of some modules).
    again, stderr = _run_cli(*argv, env=env)
    assert again["status"] == 0, stderr
    assert not {"transformers", "peft", "torch._dynamo"} & set(again["loaded"]), again
    assert (tmp_path / "x.png").read_bytes() == first
    assert "warning" not in stderr.lower() and "Loading" not in stderr, stderr
    forced, _ = _run_cli(*argv, "--engine", "transformers", env=env)
    assert "transformers" in forced["loaded"] and (tmp_path / "x.png").read_bytes() == first


def test_verbose_brings_the_library_output_back(
    lora_folder: tuple[Path, str],
    tmp_path: Path,
    cache_dir: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from llmcxr.cli import main

    folder, base = lora_folder
    status = main(
        [
            "generate-image",
            "lungs are clear",
            "-o",
            str(tmp_path / "x.png"),
            "--model",
            str(folder),
            "--base-model",
            base,
            "--device",
            "cpu",
            "--no-cache",
            "--verbose",
        ]
    )
    assert status == 0
    assert "Loading weights" in capfd.readouterr().err


def test_pruning_keeps_the_most_recently_used_entries(tmp_path: Path) -> None:
    root = tmp_path / "merged"
    ages = {"a": 400, "b": 300, "c": 200, "d": 100}  # seconds since last use
    for name, age in ages.items():
        (root / name).mkdir(parents=True)
        (root / name / merged_cache.ENTRY_FILE).write_text("{}")
        stamp = (root / name / merged_cache.ENTRY_FILE).stat().st_mtime - age
        os.utime(root / name / merged_cache.ENTRY_FILE, (stamp, stamp))
    (root / "new").mkdir()
    (root / "new" / merged_cache.ENTRY_FILE).write_text("{}")
    (root / "partial").mkdir()  # no entry file: another process may be writing it

    merged_cache.prune(root, keep=root / "new")

    kept = sorted(p.name for p in root.iterdir())
    assert len(kept) - 1 == merged_cache.MAX_ENTRIES  # "partial" is not an entry
    assert kept == ["c", "d", "new", "partial"]


def test_a_base_file_is_hashed_again_only_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmcxr.gpu_kit import parts

    reads: list[str] = []
    real = parts.sha256_file
    monkeypatch.setattr(parts, "sha256_file", lambda p: reads.append(p.name) or real(p))
    base, adapter = tmp_path / "base.gguf", tmp_path / "adapter.safetensors"
    base.write_bytes(b"base weights")
    adapter.write_bytes(b"adapter")
    first = merged_cache.entry_for([base], [adapter], tmp_path / "cache")
    again = merged_cache.entry_for([base], [adapter], tmp_path / "cache")
    assert again == first and reads == ["base.gguf", "adapter.safetensors", "adapter.safetensors"]
    base.write_bytes(b"other weights!")  # new size and mtime: read again, a new entry
    assert merged_cache.entry_for([base], [adapter], tmp_path / "cache") != first
    assert reads.count("base.gguf") == 2
