"""Token cache: images tokenised once, unreadable/missing ones skipped, rebuilt on a new
tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from llm_fixtures import tiny_vqgan_config

from llmcxr.token_cache import ImageTokenCache, StaleTokenCacheError, build_token_cache, main
from vqgan import CXRTokenizer, load_cxr_tensor


def _dataset(root: Path, fixtures_dir: Path) -> Path:
    images = sorted(p for p in fixtures_dir.iterdir() if p.suffix in {".png", ".jpg"})
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i, src in enumerate(images):
        shutil.copy(src, root / "imgs" / src.name)
        rows.append(
            {"image_id": f"img{i}", "path": f"imgs/{src.name}", "patient_id": "p", "view": "PA"}
        )
    (root / "imgs" / "broken.png").write_bytes(b"not an image")
    rows.append({"image_id": "broken", "path": "imgs/broken.png", "patient_id": "p", "view": "PA"})
    rows.append({"image_id": "nofile", "path": "", "patient_id": "p", "view": "PA"})
    (root / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _tokenizer(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return CXRTokenizer(tiny_vqgan_config()).save_pretrained(path)


def test_cache_encodes_once_invalidates_on_new_tokenizer_and_resumes(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    data = _dataset(tmp_path / "ds", fixtures_dir)
    first = _tokenizer(tmp_path / "tok_a", 0)
    cache_dir = build_token_cache(data, first, shard_size=2, batch_size=2, progress=False)
    old = ImageTokenCache.load(cache_dir)
    # unreadable and file-less images are left out; the rest equal a direct encoding
    assert "broken" not in old and "nofile" not in old and len(old) == 3
    tokenizer = CXRTokenizer.from_pretrained(first)
    src = sorted(p for p in fixtures_dir.iterdir() if p.suffix in {".png", ".jpg"})[1]
    expected = tokenizer.encode(load_cxr_tensor(src, tokenizer.image_size)[None])[0]
    assert torch.equal(old.get("img1"), expected)
    second = _tokenizer(tmp_path / "tok_b", 1)
    new_fp = CXRTokenizer.from_pretrained(second).fingerprint
    with pytest.raises(StaleTokenCacheError, match="built with tokenizer"):
        ImageTokenCache.load(cache_dir, fingerprint=new_fp)
    assert main(["--dataset", str(data), "--tokenizer", str(second), "--shard-size", "2"]) == 0
    rebuilt = ImageTokenCache.load(cache_dir, fingerprint=new_fp)
    assert rebuilt.fingerprint != old.fingerprint
    assert not torch.equal(rebuilt.get("img0"), old.get("img0"))
    # resume: a deleted shard is recomputed, the others are reused as they are
    shard = cache_dir / "shards" / "00001"
    stamp = (cache_dir / "shards" / "00000").stat().st_mtime_ns
    shutil.rmtree(shard)
    meta = json.loads((cache_dir / "cache.json").read_text())
    (cache_dir / "cache.json").write_text(json.dumps({**meta, "complete": False}))
    build_token_cache(data, second, shard_size=2, progress=False)
    assert shard.is_dir()
    assert (cache_dir / "shards" / "00000").stat().st_mtime_ns == stamp
    assert torch.equal(ImageTokenCache.load(cache_dir).get("img2"), rebuilt.get("img2"))
