"""The samplers: class-balanced draws and length-grouped batches, alone and as DDP shares."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from pipeline.data.samplers import GROUP_BATCHES, ClassBalancedSampler, LengthGroupedBatches


def test_class_balanced_sampler_balances_and_splits_disjointly():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1 + [-100] * 5)
    single = ClassBalancedSampler(labels, seed=3)
    ranks = [ClassBalancedSampler(labels, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    drawn = list(single)
    shares = [list(sampler) for sampler in ranks]
    assert len(drawn) == 105 and [len(s) for s in shares] == [53, 53]
    # The ranks' shares interleave to one global draw (of 106 = 53 * 2 entries).
    merged = [index for pair in zip(*shares) for index in pair]
    generator = torch.Generator().manual_seed(3 + 1)
    expected = torch.multinomial(ranks[0].weights, 106, replacement=True, generator=generator).tolist()
    assert merged == expected
    counts = np.bincount(labels[np.array(drawn)], minlength=3)
    assert counts.min() > 20  # each of the 3 classes about a third, however rare
    assert all(labels[i] >= 0 for i in drawn)
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != shares[0]


def padded_tokens(batches: list[list[int]], lengths: np.ndarray) -> int:
    return sum(len(batch) * int(lengths[batch].max()) for batch in batches)


def test_length_grouped_batches_read_every_index_once_with_less_padding():
    lengths = np.random.default_rng(0).integers(5, 97, size=1000)
    sampler = DistributedSampler(range(1000), num_replicas=1, rank=0, shuffle=True, seed=4)
    grouped = LengthGroupedBatches(sampler, lengths, batch_size=8, shuffle=True, seed=4)
    grouped.set_epoch(1)
    batches = list(grouped)
    assert len(batches) == len(grouped) == 125 and all(len(batch) == 8 for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(1000))
    plain = [list(sampler)[i:i + 8] for i in range(0, 1000, 8)]
    assert padded_tokens(batches, lengths) < 0.7 * padded_tokens(plain, lengths)
    # random across groups: the batch order is shuffled, not sorted by length
    maxima = [int(lengths[batch].max()) for batch in batches]
    assert maxima != sorted(maxima)
    # a function of (seed, epoch): the same again, another order next epoch
    assert list(grouped) == batches
    grouped.set_epoch(2)
    assert sampler.epoch == 2 and list(grouped) != batches


def test_length_grouped_batches_keep_ddp_shares_disjoint_and_equal():
    lengths = np.arange(101) % 17
    shares = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(101), num_replicas=2, rank=rank, shuffle=True, seed=0)
        grouped = LengthGroupedBatches(sampler, lengths, batch_size=4, shuffle=True)
        grouped.set_epoch(3)
        shares.append([list(batch) for batch in grouped])
        assert sorted(i for batch in shares[-1] for i in batch) == sorted(sampler)
    assert len(shares[0]) == len(shares[1]) == 13  # 51 indices a rank: 12 batches of 4 and one of 3


def test_length_grouped_batches_without_shuffle_sort_within_each_group():
    lengths = np.arange(300)[::-1]  # longest first
    batches = list(LengthGroupedBatches(range(300), lengths, batch_size=2, shuffle=False))
    group = 2 * GROUP_BATCHES
    assert [i for batch in batches for i in batch] == [i for start in range(0, 300, group)
                                                       for i in range(start, start + group)[::-1]]
