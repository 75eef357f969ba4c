"""`llmcxr.cpu_linear.linear`: the fp32 product split across threads gives `F.linear`'s values,
and it is the split path (not `F.linear`) that runs where it should."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from llmcxr import cpu_linear


@pytest.fixture
def threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("shape", [(1, 24), (3, 1, 24), (2, 5, 24), (64, 24)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_split_product_equals_f_linear(
    threads: None, shape: tuple[int, ...], with_bias: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(10, 24, generator=generator)
    bias = torch.randn(10, generator=generator) if with_bias else None
    expected = F.linear(x, weight, bias)

    def no_plain(*args: object) -> torch.Tensor:
        raise AssertionError("F.linear ran: the product was not split")

    monkeypatch.setattr(cpu_linear.F, "linear", no_plain)
    got = cpu_linear.linear(x, weight, bias)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "rows, weight",
    [
        (65, torch.randn(10, 24)),  # more rows than SPLIT_MAX_ROWS: MKL threads it
        (1, torch.randn(11, 24)),  # 11 output rows do not split into 2 blocks
        (1, torch.randn(24, 10).T),  # not contiguous: no view into blocks
        (1, torch.randn(10, 24).bfloat16()),  # bf16 kernels use every thread already
    ],
)
def test_products_it_should_not_split_go_to_f_linear(
    threads: None, rows: int, weight: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cpu_linear.SPLIT_MAX_ROWS == 64
    x = torch.randn(rows, 24, dtype=weight.dtype)
    calls = []
    plain = F.linear

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args)
        return plain(*args)

    monkeypatch.setattr(cpu_linear.F, "linear", counted)
    got = cpu_linear.linear(x, weight)
    assert len(calls) == 1
    torch.testing.assert_close(got, plain(x, weight))


def test_one_thread_does_not_split(monkeypatch: pytest.MonkeyPatch) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cpu_linear._parts(torch.randn(10, 24)) == 1
    finally:
        torch.set_num_threads(previous)


def test_blocks_are_the_most_that_divide_the_rows(threads: None) -> None:
    assert cpu_linear._parts(torch.randn(1026, 4)) == 2
    assert cpu_linear._parts(torch.randn(1025, 4)) == 1


def test_one_bf16_row_runs_without_onednn_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 24, generator=generator).bfloat16()
    weight = torch.randn(10, 24, generator=generator).bfloat16()
    reference = F.linear(x.float(), weight.float())
    seen = []
    plain = F.linear

    def recorded(*args: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.mkldnn.enabled)
        return plain(*args)

    monkeypatch.setattr(cpu_linear.F, "linear", recorded)
    assert torch.backends.mkldnn.enabled
    got = cpu_linear.linear(x, weight)
    assert seen == [False]
    assert torch.backends.mkldnn.enabled
    assert got.dtype == torch.bfloat16
    # fp32 accumulation, one bf16 rounding of each output
    torch.testing.assert_close(got.float(), reference, rtol=2**-7, atol=1e-2)
    seen.clear()
    cpu_linear.linear(torch.randn(2, 24).bfloat16(), weight)  # two rows: oneDNN is faster
    assert seen == [True]
