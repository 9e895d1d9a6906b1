import numpy as np

from schn.engine import SampleSchedule


def test_cover_all_samples_every_item_within_ceil_n_over_m_draws():
    sched = SampleSchedule(n=103, m=20, cover_all=True, rng=np.random.default_rng(0))
    seen = np.zeros(103, bool)
    for _ in range(6):  # ceil(103 / 20) = 6
        sample = sched.draw()
        assert len(np.unique(sample)) == len(sample) <= 20
        seen[sample] = True
    assert seen.all() and sched.sampled.all()


def test_random_sampling_is_seeded_and_sized():
    a = SampleSchedule(50, 10, False, np.random.default_rng(3))
    b = SampleSchedule(50, 10, False, np.random.default_rng(3))
    for _ in range(3):
        x, y = a.draw(), b.draw()
        assert (x == y).all() and len(np.unique(x)) == 10


def test_m_larger_than_pool_takes_the_whole_pool():
    sched = SampleSchedule(7, 100, True, np.random.default_rng(0))
    assert sched.draw().tolist() == list(range(7))


def test_validation_pool_is_a_seeded_subset_or_everything():
    from schn.engine import validation_pool

    train = np.arange(100, 200)
    assert validation_pool(train, None, 0) is None and validation_pool(train, 100, 0) is None
    a, b = validation_pool(train, 30, 7), validation_pool(train, 30, 7)
    assert (a == b).all() and len(np.unique(a)) == 30 and set(a) <= set(train)
    assert (np.diff(a) > 0).all()
    assert not np.array_equal(a, validation_pool(train, 30, 8))
