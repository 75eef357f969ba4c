"""A run stopped mid-epoch and resumed from its checkpoint trains on the same batches, in the
same order, as the run that never stopped (`cxrcommon.resumable`)."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from cxrcommon.resumable import EpochSampler, ResumableLoader, lightning_trained_batches

SIZE, BATCH = 20, 4  # 5 batches per epoch


class Recorder(L.LightningModule):
    """Records the sample ids of every batch it trains on."""

    def __init__(self, weights: list[float] | None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.weights = weights
        self.seen: list[list[int]] = []

    def train_dataloader(self) -> ResumableLoader:
        ids = torch.arange(SIZE)
        return ResumableLoader(
            TensorDataset(ids),
            sampler=EpochSampler(SIZE, self.weights, seed=3),
            trained_batches=lightning_trained_batches(self),
            batch_size=BATCH,
        )

    def training_step(self, batch, batch_idx):
        (ids,) = batch
        self.seen.append(ids.tolist())
        return self.layer(ids.float()[:, None]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(tmp_path, weights, max_steps: int, ckpt_path=None) -> list[list[int]]:
    model = Recorder(weights)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0
            )
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, ckpt_path=ckpt_path)
    assert not [w for w in caught if "not resumable" in str(w.message)]
    return model.seen


@pytest.mark.parametrize("weights", [None, [1.0] * 10 + [5.0] * 10], ids=["shuffle", "weighted"])
@pytest.mark.parametrize("stop", [7, 10])  # mid-epoch, and at an epoch's end
def test_resumed_run_trains_the_batches_of_the_run_that_never_stopped(
    tmp_path, weights, stop
) -> None:
    whole = _fit(tmp_path / "whole", weights, max_steps=13)
    first = _fit(tmp_path / "parts", weights, max_steps=stop)
    last = tmp_path / "parts" / "ckpt" / "last.ckpt"
    rest = _fit(tmp_path / "parts", weights, max_steps=13, ckpt_path=last)
    assert len(whole) == 13
    assert first + rest == whole
    # epochs differ (the order is per epoch, not one order repeated)
    assert whole[0:5] != whole[5:10]


def test_epoch_sampler_orders_are_fixed_by_seed_and_epoch_and_weighted() -> None:
    sampler = EpochSampler(6, seed=1)
    assert sorted(sampler.order(0).tolist()) == list(range(6))  # a permutation
    assert sampler.order(0).tolist() == EpochSampler(6, seed=1).order(0).tolist()
    assert sampler.order(0).tolist() != sampler.order(1).tolist()
    sampler.resume_at(2, 4)
    sampler.set_epoch(2)
    assert list(sampler) == sampler.order(2).tolist()[4:]
    assert list(sampler) == sampler.order(2).tolist()  # the skip applies once
    weighted = EpochSampler(3, [0.0, 1.0, 3.0], seed=0)
    draws = torch.cat([weighted.order(e) for e in range(400)])
    assert 0 not in draws.tolist()
    assert (draws == 2).float().mean().item() == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [1.0, float("nan")], [1.0]])
def test_epoch_sampler_refuses_bad_weights(weights) -> None:
    with pytest.raises(ValueError):
        EpochSampler(2, weights)


def test_a_distributed_wrapper_resumes_by_drawing_the_epoch_again() -> None:
    """Under DDP Lightning wraps the sampler to shard it; the loader then warns and does not
    skip (skipping inside the shards would misalign them), and still iterates."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    wrapped = DistributedSamplerWrapper(EpochSampler(SIZE, seed=3), num_replicas=2, rank=0)
    loader = ResumableLoader(
        TensorDataset(torch.arange(SIZE)), sampler=wrapped, trained_batches=lambda: 1, batch_size=2
    )
    assert loader.state_dict() == {"epoch": 0, "batches": 1}
    with pytest.warns(UserWarning, match="draws that epoch again"):
        loader.load_state_dict({"epoch": 0, "batches": 1})
    assert sum(len(b[0]) for b in loader) == SIZE // 2
