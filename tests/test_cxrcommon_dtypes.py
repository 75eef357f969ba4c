"""cxrcommon.dtypes: one list of dtype names for every --dtype, one name -> torch map."""

from __future__ import annotations

import pytest
import torch

from cxrcommon.dtypes import ALIASES, DTYPE_NAMES, torch_dtype


def test_names_and_aliases_map_to_torch_dtypes() -> None:
    assert [torch_dtype(n) for n in DTYPE_NAMES] == [torch.float32, torch.float16, torch.bfloat16]
    assert {a: torch_dtype(a) for a in ALIASES} == {
        "fp32": torch.float32,
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
    }


@pytest.mark.parametrize("name", ["int8", "float64", "Float16", ""])
def test_other_names_are_refused_with_the_accepted_list(name: str) -> None:
    with pytest.raises(ValueError, match="unknown dtype .*float32, float16, bfloat16"):
        torch_dtype(name)


def test_every_dtype_option_offers_the_same_names() -> None:
    from llmcxr.cli import build_parser

    parser = build_parser()
    export = parser._subparsers._group_actions[0].choices["export"]
    checked = []
    for job, sub in export._subparsers._group_actions[0].choices.items():
        dtype = [a for a in sub._actions if "--dtype" in a.option_strings]
        if dtype:
            assert tuple(dtype[0].choices) == DTYPE_NAMES, job
            checked.append(job)
    assert sorted(checked) == ["llm", "tokenizer"]
