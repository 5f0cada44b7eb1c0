"""Error-split sampling, checked against the tutorial's numpy sampler written here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms.hvass import sampling
from dqn_jax.core import replay

prepare = jax.jit(sampling.prepare_sampling, static_argnums=4)
sample = jax.jit(sampling.sample_batch, static_argnums=2)
# Many batches at once, one key each: the statistical tests need thousands.
sample_many = jax.jit(jax.vmap(sampling.sample_batch, in_axes=(0, None, None)), static_argnums=2)


PAD = 1024  # memories up to this size are padded with unused states: one compilation serves all


def padded_plan(errors, used, threshold=0.1, min_high=0.5, batch=128):
    pad = max(0, PAD - len(errors))
    errors = jnp.asarray(np.r_[errors, np.full(pad, 9.0)], jnp.float32)
    return prepare(errors, jnp.asarray(np.r_[used, np.zeros(pad, bool)]), threshold, min_high, batch)


def draw(errors, used, threshold=0.1, min_high=0.5, batch=128, seed=0):
    plan = padded_plan(errors, used, threshold, min_high, batch)
    return np.asarray(sample(jax.random.key(seed), plan, batch))


def reference_quotas(errors, used, threshold, min_high, batch):
    """The tutorial's quotas, in plain Python: n_hi = int(max(high share, min_high) * batch)."""
    high = int(np.sum(used & (errors >= threshold)))
    low = int(np.sum(used & (errors < threshold)))
    n_hi = min(int(max(high / max(high + low, 1), min_high) * batch), batch)
    n_hi = min(max(n_hi, batch - low), high)
    return n_hi, min(batch - n_hi, low)


def reference_batch(rng, errors, used, threshold, min_high, batch):
    """The tutorial's ``random_batch``: np.random.choice without replacement in each group."""
    n_hi, n_lo = reference_quotas(errors, used, threshold, min_high, batch)
    high = np.flatnonzero(used & (errors >= threshold))
    low = np.flatnonzero(used & (errors < threshold))
    return np.r_[rng.choice(high, n_hi, replace=False), rng.choice(low, n_lo, replace=False)]


@pytest.mark.parametrize("high_share", [0.1, 0.5, 0.7, 0.93])
def test_group_quotas_and_no_repeats(high_share):
    rng = np.random.default_rng(0)
    n = 1000
    errors = np.where(rng.random(n) < high_share, 0.5, 0.01)
    errors[-200:] = 9.0  # unused states, all "high": must never be drawn
    used = np.arange(n) < 800
    share = float(np.mean(errors[used] >= 0.1))
    plan = padded_plan(errors, used)
    idx = draw(errors, used)
    assert idx.dtype == np.int32 and idx.shape == (128,)
    assert len(set(idx.tolist())) == 128
    assert used[idx].all()
    assert np.sum(errors[idx] >= 0.1) == int(max(share, 0.5) * 128)
    assert np.asarray(plan.available).tolist() == [np.sum(used & (errors >= 0.1)), np.sum(used & (errors < 0.1))]


def test_quotas_match_the_tutorials_rule():
    rng = np.random.default_rng(3)
    for _ in range(40):
        n, batch = int(rng.integers(1, 400)), 128
        errors = rng.exponential(0.2, n).astype(np.float32)
        used = rng.random(n) < rng.uniform(0.2, 1.0)
        used[0] = True
        min_high = float(rng.uniform(0, 1))
        plan = padded_plan(errors, used, 0.1, min_high, batch)
        assert tuple(np.asarray(plan.quota)) == reference_quotas(errors, used, 0.1, min_high, batch)
        idx = draw(errors, used, min_high=min_high, batch=batch, seed=int(rng.integers(1 << 30)))
        assert used[idx].all()
        n_hi, n_lo = reference_quotas(errors, used, 0.1, min_high, batch)
        if n_hi + n_lo == batch:  # enough used states: the quotas exactly, no repeats
            assert np.sum(errors[idx] >= 0.1) == n_hi and len(set(idx.tolist())) == batch


def chi_square(counts, expected):
    counts, expected = np.asarray(counts, float), np.asarray(expected, float)
    return float(np.sum((counts - expected) ** 2 / expected))


def test_inclusion_frequencies_match_the_tutorials_sampler():
    """Per state, how often it is in a batch: the same as np.random.choice per group."""
    rng = np.random.default_rng(7)
    n, batch, rounds = 400, 32, 3000
    errors = np.where(rng.random(n) < 0.2, 1.0, 0.0).astype(np.float32)
    used = np.arange(n) < 300
    plan = padded_plan(errors, used, batch=batch)
    batches = np.asarray(sample_many(jax.random.split(jax.random.key(1), rounds), plan, batch))
    ref = np.stack([reference_batch(rng, errors, used, 0.1, 0.5, batch) for _ in range(rounds)])
    n_hi, n_lo = reference_quotas(errors, used, 0.1, 0.5, batch)
    for name, got in (("new", batches), ("reference", ref)):
        counts = np.bincount(got.ravel(), minlength=PAD)[:n]
        assert counts[~used].sum() == 0, name
        for group, quota in ((used & (errors >= 0.1), n_hi), (used & (errors < 0.1), n_lo)):
            assert counts[group].sum() == rounds * quota  # the quotas, exactly, every batch
            p = quota / group.sum()
            # Counts of a draw without replacement: variance R p (1 - p) per state.
            stat = float(np.sum((counts[group] - rounds * p) ** 2) / (rounds * p * (1 - p)))
            df = group.sum() - 1
            assert stat < df + 5 * np.sqrt(2 * df), (name, stat, df)
    # A sampler favouring the front of each group (here: its first half twice as often) fails.
    counts = np.bincount(batches.ravel(), minlength=PAD)[:n]
    high = np.flatnonzero(used & (errors >= 0.1))
    biased = counts[high].astype(float) * np.where(np.arange(high.size) < high.size // 2, 4 / 3, 2 / 3)
    p = n_hi / high.size
    assert np.sum((biased - rounds * p) ** 2) / (rounds * p * (1 - p)) > 3 * high.size


def test_every_subset_and_order_equally_likely():
    """Two of five high-error states: each of the 10 pairs, and each state first, equally often."""
    errors = np.r_[np.full(5, 1.0), np.zeros(7)].astype(np.float32)
    plan = padded_plan(errors, np.ones(12, bool), batch=4)
    assert tuple(np.asarray(plan.quota)) == (2, 2)
    rounds = 6000
    batches = np.asarray(sample_many(jax.random.split(jax.random.key(2), rounds), plan, 4))
    assert (batches[:, :2] < 5).all() and (batches[:, 2:] >= 5).all()
    pairs = np.sort(batches[:, :2], axis=1)
    codes = pairs[:, 0] * 5 + pairs[:, 1]
    freq = np.unique(codes, return_counts=True)[1]
    assert freq.size == 10 and chi_square(freq, np.full(10, rounds / 10)) < 27.9  # df 9, p = 0.001
    first = np.bincount(batches[:, 0], minlength=5)
    assert chi_square(first, np.full(5, rounds / 5)) < 18.5  # df 4, p = 0.001
    low_pairs = np.unique(np.sort(batches[:, 2:], axis=1) @ [12, 1], return_counts=True)[1]
    assert low_pairs.size == 21 and chi_square(low_pairs, np.full(21, rounds / 21)) < 45.3  # df 20


@pytest.mark.parametrize("n_high", [128, 129, 200])
def test_groups_barely_larger_than_the_quota(n_high):
    """Near n = quota the draw needs several blocks: still distinct, still the whole group."""
    errors = np.r_[np.full(n_high, 1.0), np.zeros(1000 - n_high)].astype(np.float32)
    plan = padded_plan(errors, np.ones(1000, bool), min_high=1.0)
    batches = np.asarray(sample_many(jax.random.split(jax.random.key(n_high), 200), plan, 128))
    assert all(len(set(b.tolist())) == 128 for b in batches) and (batches < n_high).all()
    assert np.unique(batches).size == n_high  # 200 batches reach every state of the group


def test_sampling_at_200000_states():
    rng = np.random.default_rng(11)
    errors = rng.exponential(0.05, 200_000).astype(np.float32)
    used = np.arange(200_000) < 190_000
    idx = draw(errors, used, seed=5)
    assert len(set(idx.tolist())) == 128 and used[idx].all()
    assert np.sum(errors[idx] >= 0.1) == reference_quotas(errors, used, 0.1, 0.5, 128)[0]


def test_batches_differ_and_cover_groups():
    errors = np.r_[np.full(300, 1.0), np.full(300, 0.0)]
    seen = set()
    for seed in range(5):
        seen.update(draw(errors, np.ones(600, bool), seed=seed).tolist())
    assert len(seen) > 400


@pytest.mark.parametrize("n_high", [0, 10, 400])
def test_short_group_gives_all_and_other_fills(n_high):
    errors = np.r_[np.full(n_high, 1.0), np.full(400 - n_high, 0.0)] if n_high < 400 else np.ones(400)
    idx = draw(errors, np.ones(400, bool))
    assert len(set(idx.tolist())) == 128
    # n_high = 10: share 10/400 < 0.5, quota 64 > 10: all 10 high states, 118 low ones.
    assert np.sum(errors[idx] >= 0.1) == min(n_high, 128)


def test_short_low_group():
    errors = np.r_[np.full(190, 1.0), np.full(5, 0.0)]
    idx = draw(errors, np.ones(195, bool))
    assert len(set(idx.tolist())) == 128
    assert np.sum(errors[idx] < 0.1) == 4  # high share 190/195: n_hi = int(0.974 * 128) = 124


def test_memory_smaller_than_batch_repeats_evenly():
    errors = np.r_[np.full(3, 1.0), np.full(47, 0.0), np.full(50, 1.0)]
    used = np.arange(100) < 50
    idx = draw(errors, used)
    assert used[idx].all()
    counts = np.bincount(idx, minlength=50)[:50]
    assert counts.min() >= 2 and counts.max() <= 3  # 128 = 2.56 draws per used state


def test_gather_batch_flat_index():
    memory = replay.init_memory(3, 2, (1,), jnp.uint8, 2)
    memory = memory.replace(states=jnp.arange(6, dtype=jnp.uint8).reshape(3, 2, 1),
                            q_values=jnp.arange(12, dtype=jnp.float32).reshape(3, 2, 2))
    states, targets = sampling.gather_batch(memory, jnp.array([5, 0, 3]))
    assert states.dtype == jnp.uint8
    np.testing.assert_array_equal(states[:, 0], [5, 0, 3])  # flat index = t * games + game
    np.testing.assert_array_equal(targets, [[10, 11], [0, 1], [6, 7]])
