"""`cxrcommon.weights.shape_mismatch`: what a loader says when a config and its weights differ."""

from __future__ import annotations

import torch

from cxrcommon.weights import shape_mismatch


def test_equal_shapes_are_no_mismatch_whatever_their_type() -> None:
    assert shape_mismatch({"a": torch.Size([4, 2])}, {"a": (4, 2)}) is None


def test_the_count_and_the_first_differing_tensor_by_name_are_named() -> None:
    expected = {"b.weight": (4, 2), "a.weight": (3,), "c.bias": (2,)}
    found = {"b.weight": (2, 2), "a.weight": (3,), "d.bias": (2,)}
    assert shape_mismatch(expected, found) == (
        "3 tensors differ (b.weight: config [4, 2], weights [2, 2])"
    )
    assert (
        shape_mismatch({"c.bias": (2,)}, {}) == "1 tensor differs (c.bias: config [2], weights [])"
    )
