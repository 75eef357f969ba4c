"""One `Sampling` class: its defaults are a model folder's generation defaults (LLM-CXR's)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from llmcxr.decoding import Sampling
from llmcxr.model_folder import GenerationDefaults
from llmcxr.pipeline import DEFAULT_MODEL_DIR


def test_defaults_are_the_generation_defaults() -> None:
    sampling = {f.name for f in fields(Sampling)} - {"seed"}
    saved = GenerationDefaults().to_dict()
    assert asdict(Sampling()) == {**{k: saved[k] for k in sampling}, "seed": None}
    assert Sampling().top_p == 0.92 and Sampling().temperature == 1.0


def test_shipped_generation_json_still_sets_the_same_values() -> None:
    shipped = json.loads((DEFAULT_MODEL_DIR / "generation.json").read_text())
    loaded = GenerationDefaults.from_dict(shipped)
    assert (loaded.do_sample, loaded.temperature, loaded.top_p) == (True, 1.0, 0.92)
    assert Sampling(loaded.do_sample, loaded.temperature, loaded.top_p) == Sampling()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"temperature": 0.0}, "Temperature"), ({"top_p": 1.5}, "Top-p"), ({"seed": 1.5}, "Seed")],
)
def test_bad_settings_name_their_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Sampling(**kwargs)


def test_as_kwargs_feed_the_pipeline() -> None:
    assert Sampling(False, 0.5, 0.8, 3.0).as_kwargs() == {
        "do_sample": False,
        "temperature": 0.5,
        "top_p": 0.8,
        "seed": 3,
    }
    assert Sampling(seed=None).as_kwargs()["seed"] is None
