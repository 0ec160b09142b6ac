import numpy as np
import pytest

from ml_patterns.samplers import BatchSampler


def batches(sampler, epochs=1):
    return [b for _ in range(epochs) for b in sampler]


def test_same_seed_same_batches_other_seed_other_batches():
    a = batches(BatchSampler(1000, 32, shuffle=True, seed=7), epochs=3)
    b = batches(BatchSampler(1000, 32, shuffle=True, seed=7), epochs=3)
    c = batches(BatchSampler(1000, 32, shuffle=True, seed=8), epochs=3)
    assert a == b
    assert a != c


def test_each_epoch_is_a_new_permutation_covering_every_index_once():
    sampler = BatchSampler(100, 16, shuffle=True, seed=0)
    first, second = batches(sampler), batches(sampler)
    for epoch in (first, second):
        assert sorted(i for b in epoch for i in b) == list(range(100))
    assert first != second
    assert sampler.epoch == 2


@pytest.mark.parametrize(("n", "batch_size", "drop_last", "sizes"), [
    (10, 4, False, [4, 4, 2]),
    (10, 4, True, [4, 4]),
    (8, 4, True, [4, 4]),
    (0, 4, False, []),
    (3, 4, True, []),
])
def test_lengths_and_last_batch(n, batch_size, drop_last, sizes):
    sampler = BatchSampler(n, batch_size, shuffle=False, drop_last=drop_last)
    assert [len(b) for b in sampler] == sizes
    assert len(sampler) == len(sizes)


def test_no_shuffle_is_index_order():
    assert batches(BatchSampler(5, 2, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_resume_mid_epoch_gives_the_uninterrupted_sequence():
    reference = batches(BatchSampler(200, 16, seed=3), epochs=2)
    interrupted = BatchSampler(200, 16, seed=3)
    iterator = iter(interrupted)
    head = [next(iterator) for _ in range(5)]
    state = interrupted.state_dict()

    resumed = BatchSampler(200, 16, seed=3)
    resumed.load_state_dict(state)
    assert head + batches(resumed, epochs=2)[: len(reference) - 5] == reference


def test_load_state_refuses_another_sampler():
    state = BatchSampler(100, 10, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(100, 10, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(100, 20, seed=1).load_state_dict(state)


def test_batches_are_python_ints():
    batch = next(iter(BatchSampler(10, 4, seed=0)))
    assert all(type(i) is int for i in batch)


@pytest.mark.parametrize(("n", "batch_size", "message"), [(-1, 4, "n must be non-negative, got -1"),
                                                         (10, 0, "batch_size must be positive, got 0")])
def test_bad_arguments(n, batch_size, message):
    with pytest.raises(ValueError, match=message):
        BatchSampler(n, batch_size)


def test_order_is_seeded_numpy_generator_permutation():
    sampler = BatchSampler(50, 8, seed=5)
    np.testing.assert_array_equal(sampler.order(4), np.random.default_rng((5, 4)).permutation(50))
