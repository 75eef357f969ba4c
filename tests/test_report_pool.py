"""Paired reports redrawn each epoch: the pools a paired build stores (label-matched, one split)
and the training dataset's per-epoch draw (deterministic, frozen for validation, off by flag,
old builds unchanged)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from instructions import PromptFormat, label_report
from instructions.build import BuildConfig, build_dataset, default_stages, save_dataset
from instructions.corpora import read_openi
from instructions.filters import FilterPipeline
from instructions.paired import (
    load_label_map,
    pair_labelled_images,
    parse_image_labels,
    report_matches,
)
from instructions.report_pool import ReportPools
from instructions.reports import Report
from instructions.splits import SplitConfig
from llmcxr.base_model import TinyLMConfig, build_tiny_model
from llmcxr.data import InstructionDataModule, PadCollator, RecordEncoder, RedrawEpoch
from llmcxr.image_tokens import add_image_tokens
from llmcxr.token_cache import ImageTokenCache

SPLIT = SplitConfig(0.3, 0.3)
LABELS = ("No Finding", "Cardiomegaly", "Effusion")
CODES = 16


def _positives(text: str) -> frozenset[str]:
    ignored = ("No Finding", "Support Devices")
    return frozenset(k for k, v in label_report(text).items() if v == 1 and k not in ignored)


def _labelled_folder(folder: Path, count: int, content: str, patient: str) -> Path:
    """A labelled-images folder of `count` images (distinct bytes ``"{content} {i}"``, never
    decoded), labels cycling through `LABELS`, patient ``"{patient}{i}"`` each."""
    (folder / "images").mkdir(parents=True)
    rows = ["filename,labels,view,patient_id"]
    for i in range(count):
        (folder / "images" / f"img{i}.png").write_bytes(f"{content} {i}".encode())
        rows.append(f"img{i}.png,{LABELS[i % 3]},PA,{patient}{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _paired_build(root: Path, folders: list[Path]) -> tuple[Path, list[Report]]:
    """`folders` paired with 400 OpenI reports and built into ``root / "out"``."""
    studies, _ = pair_labelled_images(
        folders, split=SPLIT, openi_reports=list(read_openi(limit=400))
    )
    config = BuildConfig(split=SPLIT, alternate_directions=False)
    save_dataset(build_dataset(studies, config), studies, config, root / "out")
    return root / "out", studies


@pytest.fixture(scope="module")
def paired(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Report]]:
    """A labelled folder of 24 images (one patient each; the bytes are never decoded) paired with
    400 OpenI reports, built with both directions into ``out``."""
    root = tmp_path_factory.mktemp("paired")
    return _paired_build(root, [_labelled_folder(root / "nihlike", 24, "image", "p")])


def test_study_pools_are_label_matched_and_of_the_images_split(paired) -> None:
    _, studies = paired
    label_map = load_label_map()
    assert {s.pool.split for s in studies} == {"train", "val", "test"}
    for study in studies:
        pool = study.pool
        split = SPLIT.assign(study.patient_id)
        assert pool is not None and pool.split == split and len(pool.reports) >= 1
        chosen = study.report_id.split("~")[1]
        assert chosen in {r.report_id for r in pool.reports}
        name = study.images[0].image_id.split("/")[1].removesuffix(".png")
        wanted = [label_map[n] for n in parse_image_labels(LABELS[int(name[3:]) % 3])]
        for member in pool.reports:
            assert SPLIT.assign(member.report_id) == split  # no report crosses splits
            # stage 1 trains on the whole text, stage 2 on the impression: both must fit the image
            for text in (member.text(), member.text(("IMPRESSION",))):
                normal = label_report(text).get("No Finding") == 1
                assert not text.strip() or report_matches(_positives(text), normal, wanted)
    # one pool object per (split, labels), shared by its images
    assert len({id(s.pool) for s in studies}) == len({s.pool.key for s in studies})


def test_stage_files_name_pools_of_the_records_split_with_stage_texts(paired) -> None:
    from datasets import load_from_disk

    out, studies = paired
    by_id = {r.report_id: r for s in studies for r in s.pool.reports}
    fits = {s.pool.key: s.pool.fits for s in studies}
    card = json.loads((out / "card.json").read_text())
    for config in default_stages():
        pools = ReportPools.load(out / config.name)
        data = load_from_disk(str(out / config.name))
        drawn = 0
        for split in ("train", "val", "test"):
            for record in data[split]:
                if record["task"] not in ("cxr_to_report", "report_to_cxr"):
                    assert record["report_pool"] == ""
                    continue
                ids = pools.pools[record["report_pool"]]
                assert record["report_pool"].startswith(f"{split}:")
                assert ids and all(SPLIT.assign(i) == split for i in ids)
                # every text a record may draw, as this stage writes it, fits the record's image
                assert all(fits[record["report_pool"]](pools.texts[i]) for i in ids)
                own = record["input"] if record["task"] == "report_to_cxr" else record["response"]
                # the frozen pick is one of them, unless the stage's filters took its finding
                fitting = fits[record["report_pool"]](own)
                assert (own in {pools.texts[i] for i in ids}) == fitting
                drawn += fitting
        assert drawn and card["stages"][config.name]["report_pools"]["pools"] == len(pools.pools)
        for report_id, text in pools.texts.items():  # as the stage writes it (filters, sections)
            (filtered,) = FilterPipeline(config.rules)([by_id[report_id]])
            assert text == filtered.text(config.text_sections)


def test_a_study_whose_pool_is_of_another_split_is_refused(paired) -> None:
    _, studies = paired
    study = next(s for s in studies if s.pool.split == "test")
    moved = [s for s in studies if s is not study] + [replace(study, split="train")]
    with pytest.raises(ValueError, match="report pool"):
        build_dataset(moved, BuildConfig(split=SPLIT))


@pytest.fixture(scope="module")
def encoder() -> RecordEncoder:
    model, tok = build_tiny_model(TinyLMConfig())
    token_map = add_image_tokens(model, tok, codebook_size=64, tokens_per_image=CODES)
    return RecordEncoder(tok, token_map, PromptFormat())


def _write_cache(out: Path) -> None:
    """A token cache with made-up codes for every image of the build (the real file layout)."""
    from datasets import Dataset

    ids = [json.loads(line)["image_id"] for line in (out / "images.jsonl").read_text().splitlines()]
    codes = np.random.default_rng(0).integers(0, 64, (len(ids), CODES)).astype(np.int16)
    cache = out / "image_tokens"
    Dataset.from_dict({"image_id": ids, "codes": list(codes)}).save_to_disk(
        str(cache / "shards" / "00000")
    )
    meta = {"fingerprint": "test", "tokens_per_image": CODES, "complete": True}
    (cache / "cache.json").write_text(json.dumps(meta))


def _module(out: Path, encoder: RecordEncoder, **kwargs) -> InstructionDataModule:
    if not (out / "image_tokens" / "cache.json").is_file():
        _write_cache(out)
    data = InstructionDataModule(str(out), build_cache=False, max_length=4096, **kwargs)
    data.attach(encoder)
    data.setup("fit")
    return data


def _served(data: InstructionDataModule, split: str, epoch: int) -> list[list[int]]:
    dataset = data.datasets[split]
    dataset.set_epoch(epoch)
    return [dataset[i].input_ids for i in range(len(dataset))]


def test_training_redraws_each_epoch_through_the_same_encoding(paired, encoder) -> None:
    out, _ = paired
    data = _module(out, encoder)
    train = data.datasets["train"]
    drawable = [i for i, e in enumerate(train.examples) if e.draw is not None]
    assert drawable and len(drawable) < len(train)
    epoch0, epoch1 = _served(data, "train", 0), _served(data, "train", 1)
    changed = [i for i in drawable if epoch0[i] != epoch1[i]]
    assert len(changed) > len(drawable) // 2
    assert all(
        epoch0[i] == epoch1[i] == train.examples[i].input_ids
        for i in range(len(train))
        if i not in drawable
    )
    # a drawn example is the record encoded with a pool member's text, nothing else changed
    texts = ReportPools.load(out / "stage1").texts
    for i in changed[:4]:
        draw = train.examples[i].draw
        field = "input" if draw.record["task"] == "report_to_cxr" else "response"
        options = [
            encoder.encode({**draw.record, field: texts[r]}, draw.codes).input_ids
            for r in draw.pool
        ]
        assert epoch1[i] in options and epoch0[i] in options
    # another instance (another worker or rank) serves the same draws for the same epoch
    assert _served(_module(out, encoder), "train", 1) == epoch1


def test_workers_serve_the_epoch_the_main_process_sets(paired, encoder) -> None:
    out, _ = paired
    data = _module(out, encoder)
    train = data.datasets["train"]
    loader = DataLoader(
        train, batch_size=8, num_workers=2, persistent_workers=True, collate_fn=PadCollator(0)
    )
    for epoch in (0, 1):
        train.set_epoch(epoch)
        batches = [b["input_ids"] for b in loader]
        expected = [b["input_ids"] for b in DataLoader(train, 8, collate_fn=PadCollator(0))]
        assert all(torch.equal(a, b) for a, b in zip(batches, expected, strict=True))


def test_validation_is_frozen_and_the_flag_turns_the_draw_off(paired, encoder) -> None:
    out, _ = paired
    data = _module(out, encoder)
    frozen = [e.input_ids for e in data.datasets["val"].examples]
    assert frozen and _served(data, "val", 0) == _served(data, "val", 3) == frozen
    off = _module(out, encoder, redraw_paired_reports=False)
    train = off.datasets["train"]
    assert all(e.draw is None for e in train.examples) and train.redraw is None
    assert _served(off, "train", 0) == _served(off, "train", 1)
    assert _served(off, "train", 1) == [e.input_ids for e in data.datasets["train"].examples]


def test_a_build_without_pools_trains_as_before(paired, encoder, tmp_path: Path) -> None:
    from datasets import load_from_disk

    out, _ = paired
    old = tmp_path / "old"  # as built before report pools: no column, no report_pool.json
    stage = load_from_disk(str(out / "stage1")).remove_columns("report_pool")
    stage.save_to_disk(str(old / "stage1"))
    for name in ("images.jsonl", "prompt_format.json"):
        (old / name).write_text((out / name).read_text())
    data = _module(old, encoder)
    expected, _ = encoder.encode_all(
        stage["train"], ImageTokenCache.load(old / "image_tokens"), 4096
    )
    assert data.datasets["train"].redraw is None
    assert _served(data, "train", 0) == _served(data, "train", 5)
    assert _served(data, "train", 5) == [e.input_ids for e in expected]


class _Recorder(L.LightningModule):
    """Records the ids of every training example it sees, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, set[tuple[int, ...]]] = {}

    def training_step(self, batch, batch_idx):
        rows = self.seen.setdefault(self.current_epoch, set())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True):
            rows.add(tuple(ids[mask.bool()].tolist()))
        return (self.weight**2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_gives_the_dataset_each_epoch(paired, encoder) -> None:
    out, _ = paired
    data = _module(out, encoder)
    module = _Recorder()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    for epoch in (0, 1):
        assert module.seen[epoch] == {tuple(ids) for ids in _served(data, "train", epoch)}
    assert module.seen[0] != module.seen[1]
    assert sum(isinstance(c, RedrawEpoch) for c in trainer.callbacks) == 1


def test_a_member_whose_stage_text_loses_its_finding_leaves_the_stage_pool(tmp_path: Path) -> None:
    """Stage 2 drops sentences that compare with a prior study: a report whose only pneumonia
    sentence is such a comparison stays in stage 1's pool of a COVID-19 image, not stage 2's."""
    from types import SimpleNamespace

    from instructions.filters import stage1_rules, stage2_rules
    from instructions.report_pool import stage_pools

    folder = tmp_path / "covidlike"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "c.png").write_bytes(b"image")
    (folder / "labels.csv").write_text("filename,labels\nc.png,COVID-19\n")
    findings = "There is a patchy airspace opacity in the right lower lobe of the lung today."

    def report(report_id: str, impression: str) -> Report:
        sections = {"FINDINGS": findings, "IMPRESSION": impression}
        return Report(report_id, report_id, "openi", sections)

    reports = [
        report("CXR1", "Right lower lobe pneumonia, unchanged since the prior study. No effusion."),
        report("CXR2", "Right lower lobe pneumonia. No effusion."),
    ]
    (study,) = pair_labelled_images(
        [folder], split=SplitConfig(0.0, 0.0), openi_reports=reports, near_duplicate_distance=None
    )[0]
    pools = {study.pool.key: study.pool}
    records = {"train": [SimpleNamespace(report_pool=study.pool.key)]}
    stage1 = stage_pools(records, pools, stage1_rules(), ("FINDINGS", "IMPRESSION"))
    stage2 = stage_pools(records, pools, stage2_rules(), ("IMPRESSION",))
    assert stage1.pools[study.pool.key] == ("CXR1", "CXR2")
    assert stage2.pools[study.pool.key] == ("CXR2",)
    assert set(stage2.texts) == {"CXR2"}


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A paired build from two labelled folders (12 images each), so its records have two
    ``source`` names."""
    root = tmp_path_factory.mktemp("two_sources")
    folders = [_labelled_folder(root / name, 12, name, name) for name in ("big", "small")]
    return _paired_build(root, folders)[0]


def test_source_weights_multiply_task_weights_in_the_sampler(two_sources, encoder) -> None:
    small = "paired:small+openi"
    plain = _module(two_sources, encoder)
    examples = plain.datasets["train"].examples
    assert {e.source for e in examples} == {small, "paired:big+openi"}
    data = _module(
        two_sources,
        encoder,
        task_weights={"cxr_to_report": 2.0, "vqa": 0.5},
        source_weights={small: 3.0},
    )
    sampler = data.train_dataloader().sampler
    task = {"cxr_to_report": 2.0, "vqa": 0.5}
    expected = [task.get(e.task, 1.0) * (3.0 if e.source == small else 1.0) for e in examples]
    assert sampler.weights.tolist() == pytest.approx(expected)
    assert len(set(expected)) >= 4  # both tables matter: tasks and sources
    # the served share of the small source follows the weights (epochs' draws, >= 20k samples)
    epochs = -(-20_000 // len(examples))
    draws = torch.cat([sampler.order(epoch) for epoch in range(epochs)]).tolist()
    share = np.mean([examples[i].source == small for i in draws])
    want = sum(w for w, e in zip(expected, examples, strict=True) if e.source == small) / sum(
        expected
    )
    assert share == pytest.approx(want, abs=0.02)
    assert share > 0.6  # ~half the records, three times the weight


def test_source_weights_naming_no_source_or_negative_are_refused(two_sources, encoder) -> None:
    with pytest.raises(ValueError, match=r"paired:nih\+openi.*its sources"):
        _module(two_sources, encoder, source_weights={"paired:nih+openi": 2.0})
    with pytest.raises(ValueError, match="non-negative"):
        _module(two_sources, encoder, source_weights={"paired:small+openi": -1.0})
    with pytest.raises(ValueError, match="non-negative"):
        _module(two_sources, encoder, task_weights={"vqa": float("nan")})


def test_film_groups_follow_the_report_pool_through_redraws_and_batches(paired, encoder) -> None:
    out, _ = paired
    data = _module(out, encoder)
    train = data.datasets["train"]
    grouped = [e for e in train.examples if e.film_group]
    # only film readers carry a group: report->CXR records share pools but read no film
    assert grouped and all(e.task == "cxr_to_report" for e in grouped)
    assert all(e.draw is not None for e in grouped)
    assert len({e.film_group for e in grouped}) > 1
    train.set_epoch(1)
    served = [train[i] for i in range(len(train))]
    assert [e.film_group for e in served] == [e.film_group for e in train.examples]
    # report->CXR records carry their pool as a drawing group, through the redraws too
    drawn = [e for e in train.examples if e.draw_group]
    assert drawn and all(e.task == "report_to_cxr" and e.draw is not None for e in drawn)
    assert [e.draw_group for e in served] == [e.draw_group for e in train.examples]
    assert any(s.input_ids != e.input_ids for s, e in zip(served, train.examples) if e.film_group)
    rows = served[:16]
    numbers = PadCollator(0)(rows)["film_group"].tolist()
    assert [n >= 0 for n in numbers] == [bool(e.film_group) for e in rows] and max(numbers) >= 1
    for a, b in [(a, b) for a in range(16) for b in range(16) if numbers[a] >= 0 <= numbers[b]]:
        assert (numbers[a] == numbers[b]) == (rows[a].film_group == rows[b].film_group)


def _write_histogram_cache(out: Path, seed: int, stored_seed: int | None = None) -> None:
    """A film-histogram cache (`llmcxr.token_cache.default_cache_dir(out, seed)`) of other
    made-up codes for every image."""
    from datasets import Dataset

    ids = [json.loads(line)["image_id"] for line in (out / "images.jsonl").read_text().splitlines()]
    codes = np.random.default_rng(100 + seed).integers(0, 64, (len(ids), CODES)).astype(np.int16)
    cache = out / f"image_tokens_histogram{seed}"
    Dataset.from_dict({"image_id": ids, "codes": list(codes)}).save_to_disk(
        str(cache / "shards" / "00000")
    )
    stored = seed if stored_seed is None else stored_seed
    meta = {"fingerprint": "test", "tokens_per_image": CODES, "complete": True}
    (cache / "cache.json").write_text(json.dumps(meta | {"histogram_seed": stored}))


def test_film_readers_are_served_their_film_or_its_histogram_variant(paired, encoder) -> None:
    out, _ = paired
    _write_histogram_cache(out, 1)
    data = _module(out, encoder, film_histogram_seeds=[1])
    train = data.datasets["train"]
    variant = ImageTokenCache.load(out / "image_tokens_histogram1")
    readers = [e for e in train.examples if e.film_variants]
    assert all(len(e.film_variants) == 1 for e in readers)
    assert {e.task for e in readers} >= {"cxr_to_report"} and all(
        e.film_variants for e in train.examples if e.task == "cxr_to_report"
    )
    # drawings keep their own film, and validation is not varied
    assert all(not e.film_variants for e in train.examples if e.task == "report_to_cxr")
    assert all(not e.film_variants for e in data.datasets["val"].examples)
    index = train.examples.index(readers[0])
    example = train.examples[index]
    start, ids = example.film_start, list(example.film_variants[0])
    assert ids != example.input_ids[start : start + CODES]
    draws = {"own": 0, "variant": 0}
    for _ in range(60):
        served = train[index]
        assert len(served.input_ids) == len(served.labels)
        assert served.input_ids[:start] == example.input_ids[:start]
        # only the film differs from the stored (or this epoch's redrawn) example
        film = served.input_ids[start : start + CODES]
        draws["own" if film == example.input_ids[start : start + CODES] else "variant"] += 1
        if film != example.input_ids[start : start + CODES]:
            assert film == ids
    assert draws["own"] > 10 and draws["variant"] > 10
    # the variant is the same film's codes in the histogram cache, mapped to the vocabulary
    image_ids = [
        json.loads(line)["image_id"] for line in (out / "images.jsonl").read_text().splitlines()
    ]
    assert any(ids == encoder.token_map.codes_to_ids(variant.get(i)).tolist() for i in image_ids)
    assert example.input_ids[start - 1] not in ids  # the run starts after the image-start marker


def test_a_missing_or_foreign_histogram_cache_is_refused(paired, encoder) -> None:
    out, _ = paired
    with pytest.raises(FileNotFoundError, match="image_tokens_histogram7"):
        _module(out, encoder, film_histogram_seeds=[7])
    _write_histogram_cache(out, 8, stored_seed=9)
    from llmcxr.token_cache import StaleTokenCacheError

    with pytest.raises(StaleTokenCacheError, match="histogram seed 8"):
        _module(out, encoder, film_histogram_seeds=[8])
