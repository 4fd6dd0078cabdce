"""ResumableDataLoader: the data position a checkpoint stores, and what a resumed loader does with it."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_rlhf.data.resumable import DataPosition, ResumableDataLoader

DATA = list(range(10))  # batches of 3: three full and a ragged one


def _loader(position: DataPosition, **kwargs) -> ResumableDataLoader:
    kwargs.setdefault("shuffle", True)
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return ResumableDataLoader(DATA, batch_size=3, position=position, **kwargs)


def _epochs(loader, n: int) -> list[list[list[int]]]:
    return [[batch.tolist() for batch in loader] for _ in range(n)]


def _saved_after(loader, epochs: int, batches: int) -> dict:
    """Run ``epochs`` full epochs, then ``batches`` batches of the next; the position a checkpoint would hold."""
    _epochs(loader, epochs)
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    return loader.position_holder.state_dict()


@pytest.mark.parametrize("batches", [0, 2, 4])
def test_a_resumed_loader_goes_on_with_the_next_batch_of_the_same_epoch_order(batches):
    reference = _epochs(_loader(DataPosition()), 3)
    assert reference[0] != reference[1], "each epoch draws a new order"
    saved = _saved_after(_loader(DataPosition()), 1, batches)
    resumed_position = DataPosition()
    resumed_position.load_state_dict(saved)
    resumed = _epochs(_loader(resumed_position), 2)
    if batches < 4:  # mid-epoch: the rest of epoch 2, then epoch 3
        assert resumed == [reference[1][batches:], reference[2]]
    else:  # saved at the epoch's end: the next epoch starts whole
        assert resumed[0] == reference[2]


def test_the_epoch_length_of_the_loop_decides_whether_a_position_is_at_the_epoch_end():
    """With ``limit_train_batches=2`` the loop stops every epoch after 2 batches; a position there is an epoch end."""
    loader = _loader(DataPosition(), epoch_length=lambda: 2)
    reference = [[next(iterator).tolist() for _ in range(2)] for iterator in (iter(loader), iter(loader))]
    saved = _saved_after(_loader(DataPosition(), epoch_length=lambda: 2), 0, 2)
    position = DataPosition()
    position.load_state_dict(saved)
    assert [b.tolist() for b in _loader(position, epoch_length=lambda: 2)][:2] == reference[1]


def test_a_position_saved_by_two_ranks_is_refused_on_one_with_what_to_do():
    two_ranks = ResumableDataLoader(DATA, batch_size=3, sampler=DistributedSampler(DATA, num_replicas=2, rank=0),
                                    position=DataPosition())
    saved = _saved_after(two_ranks, 0, 1)
    assert saved["world_size"] == 2
    position = DataPosition()
    position.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved by 2 rank\(s\) with batch size 3 per rank; this run has 1 rank\(s\) "
                                         r"with batch size 3.*Resume with trainer.devices/num_nodes giving 2 rank"):
        next(iter(_loader(position)))
    position.load_state_dict({**saved, "world_size": 1, "batch_size": 4})
    with pytest.raises(ValueError, match="batch size 4 per rank; this run has 1 rank"):
        next(iter(_loader(position)))


def test_a_position_past_the_end_of_changed_data_is_named():
    position = DataPosition()
    position.load_state_dict({**_saved_after(_loader(DataPosition()), 0, 3), "batches": 3})
    with pytest.raises(ValueError, match="batch 3 of the epoch, but this epoch has only 2 batches: the training data"):
        next(iter(ResumableDataLoader(DATA[:6], batch_size=3, position=position, epoch_length=lambda: 9)))
