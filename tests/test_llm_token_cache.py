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


def test_random_histogram_partners_share_source_and_split() -> None:
    from llmcxr.token_cache import ImageEntry, with_random_histograms

    entries = [
        ImageEntry("nih/a", Path("a.png"), "train"),
        ImageEntry("nih/b", Path("b.png"), "train"),
        ImageEntry("nih/c", Path("c.png"), "train"),
        ImageEntry("nih/d", Path("d.png"), "test"),
        ImageEntry("covid/e", Path("e.png"), "train"),
        ImageEntry("covid/f", Path("f.png"), "train"),
    ]
    paired = with_random_histograms(entries, seed=0)
    assert [e.image_id for e in paired] == [e.image_id for e in entries]
    partner = {e.image_id: e.histogram_of for e in paired}
    assert partner["nih/a"] in (Path("b.png"), Path("c.png"))
    assert partner["nih/d"] == Path("d.png")  # alone in its split: its own histogram
    assert partner["covid/e"] == Path("f.png") and partner["covid/f"] == Path("e.png")
    assert with_random_histograms(entries, seed=0) == paired  # seeded
    seeds = {with_random_histograms(entries, seed=s)[0].histogram_of for s in range(20)}
    assert seeds == {Path("b.png"), Path("c.png")}


def test_histogram_cache_encodes_each_film_on_its_partners_histogram(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    from llmcxr.token_cache import default_cache_dir, read_image_list, with_random_histograms
    from vqgan import match_histogram, prepare_image, read_cxr

    data = _dataset(tmp_path / "ds", fixtures_dir)
    listing = data / "images.jsonl"  # one source ("fix/..."), so the films pair up
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    listing.write_text(
        "".join(json.dumps(r | {"image_id": f"fix/{r['image_id']}"}) + "\n" for r in rows)
    )
    tok_path = _tokenizer(tmp_path / "tok", 0)
    cache_dir = build_token_cache(data, tok_path, histogram_seed=3, progress=False)
    assert cache_dir == default_cache_dir(data, 3) == data / "image_tokens_histogram3"
    cache = ImageTokenCache.load(cache_dir)
    assert cache.meta["histogram_seed"] == 3 and len(cache) == 3
    plain = ImageTokenCache.load(build_token_cache(data, tok_path, progress=False))
    tokenizer = CXRTokenizer.from_pretrained(tok_path)
    entries = with_random_histograms(read_image_list(data)[0], 3)
    changed = 0
    for entry in entries:
        if entry.image_id == "fix/broken":
            assert entry.image_id not in cache
            continue
        pixels = read_cxr(entry.path)
        if entry.histogram_of.name != "broken.png":  # an unreadable partner leaves the film be
            pixels = match_histogram(pixels, read_cxr(entry.histogram_of))
        expected = tokenizer.encode(prepare_image(pixels, tokenizer.image_size)[None])[0]
        assert torch.equal(cache.get(entry.image_id), expected)
        changed += not torch.equal(cache.get(entry.image_id), plain.get(entry.image_id))
    assert changed >= 2
    # another seed is another cache; asking this folder for another seed rebuilds it
    assert build_token_cache(data, tok_path, histogram_seed=4, progress=False).name.endswith("4")
    build_token_cache(data, tok_path, cache_dir, histogram_seed=5, progress=False)
    assert ImageTokenCache.load(cache_dir).meta["histogram_seed"] == 5
    args = ["--dataset", str(data), "--tokenizer", str(tok_path), "--histogram-seed", "6"]
    assert main(args) == 0
    assert ImageTokenCache.load(data / "image_tokens_histogram6").meta["histogram_seed"] == 6
