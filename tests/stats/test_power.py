"""minimum_detectable_gap: 1/sqrt(N) scaling and agreement with a brute-force power simulation."""

import numpy as np
import pytest
from scipy import stats

from routecal.stats import diagnostics as dg
from routecal.stats import power, simulation, validity


def _mdg(n, seed=0, n_datasets=200):
    d = simulation.design(seed, "sign", n)  # calibrated data, effect 0
    return dg.minimum_detectable_gap(d.confidence[0], d.correct[0], key=1, n_datasets=n_datasets)


def _brute_force_power(n, gap, n_datasets):
    """The real test (sign-flip null, B = 199) on planted datasets, one vmapped batch."""
    d = simulation.design(0, "sign", n)
    r, y = power.plant_gap(d.confidence[0], d.correct[0], gap, key=5, n_datasets=n_datasets)
    c = np.broadcast_to(d.confidence[0], y.shape)
    res = dg.conditional_test_batch(c, y, r, key=3, n_permutations=199)
    return int(np.sum(res.p_value <= 0.05))


def test_planted_gap_has_the_planted_size():
    d = simulation.design(0, "sign", 4000, conf_low=0.3, conf_high=0.8)  # no capping
    r, y = power.plant_gap(d.confidence[0], d.correct[0], 0.2, key=2, n_datasets=20)
    gap = np.mean([y[i][r[i] > 0].mean() - y[i][r[i] <= 0].mean() for i in range(20)])
    assert gap == pytest.approx(0.2, abs=0.01)  # se ~ sqrt(.25 * 4 / 4000 / 20) = 0.0035


def test_mdg_shrinks_like_one_over_sqrt_n_fast():
    small, large = _mdg(500, n_datasets=100), _mdg(2000, n_datasets=100)
    assert np.all(np.diff(large.power) > -0.15)  # a power curve (monotone up to MC noise)
    assert 1.5 < small.gap / large.gap < 2.6  # sqrt(4) = 2
    assert np.all(small.power_low <= small.power) and np.all(small.power <= small.power_high)


@pytest.mark.slow
def test_mdg_issue_numbers_and_brute_force():
    """N = 1000 vs 16000: ratio sqrt(16) = 4; at N = 1000 the real test's power at the MDG is 0.8."""
    m1, m16 = _mdg(1000), _mdg(16_000)
    assert 3.3 < m1.gap / m16.gap < 4.8
    hits = _brute_force_power(1000, m1.gap, 400)
    lo, hi = stats.binom.interval(0.99, 400, 0.8)
    assert lo <= hits <= hi, (hits, lo, hi)


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(alpha=0.0), "alpha"), (dict(power=1.0), "power"), (dict(n_datasets=5), "n_datasets"),
     (dict(gaps=[0.2, 0.1]), "gaps"), (dict(key="a"), "key")],
)
def test_bad_input_raises_naming_argument(kwargs, match):
    base = dict(confidence=np.linspace(0.5, 1, 200), correct=np.ones(200), key=0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dg.minimum_detectable_gap(**base)


@pytest.mark.slow
def test_mdg_with_clusters_is_larger_on_clustered_data():
    d = simulation.design(0, "clustered", 3000)
    iid = dg.minimum_detectable_gap(d.confidence[0], d.correct[0], key=1, n_datasets=100)
    clustered = dg.minimum_detectable_gap(
        d.confidence[0], d.correct[0], key=1, n_datasets=100, clusters=d.clusters[0]
    )
    assert clustered.gap > 1.2 * iid.gap  # measured 0.080 vs 0.054: fewer independent units


def test_mdg_simulates_the_test_with_few_clusters():
    """Issue 22: with the sign-flip null K = 5 clusters cannot reach alpha = 0.05 (smallest p
    2^-4), so the stated power is 0 and no gap is detectable; the default at K = 5 (the
    within-cluster t reference; the omnibus test's Bonferroni p too) and K = 16 (the fixed scores'
    random flips): the stated power matches the real test's rate."""
    d = simulation.design(0, "clustered", 1500, cluster_size=300)  # K = 5
    m = dg.minimum_detectable_gap(d.confidence[0], d.correct[0], key=1, clusters=d.clusters[0],
                                  n_datasets=20, gaps=[0.1, 0.4, 0.9], reference="fixed")
    assert np.all(m.power == 0) and m.gap == float("inf")
    for k, alternative in ((5, "monotone"), (5, "omnibus"), (16, "monotone")):
        check = validity.power_check(7, k, n=1500, n_datasets=60, n_permutations=99,
                                     alternative=alternative)
        assert abs(check.stated - check.measured) <= 0.2, check  # 60 datasets: sd ~0.065 each


@pytest.mark.parametrize("alternative", ["monotone", "omnibus"])
def test_mdg_batched_over_datasets_equals_one_batch(monkeypatch, alternative):
    """Large N vmaps the simulated datasets in batches (memory): the same keys give the same
    power curve whatever the batch size, remainder batch included (R = 30, batches of 7)."""
    import jax

    d = simulation.design(0, "sign", 600)
    kw = dict(key=4, n_datasets=30, alternative=alternative, clusters=np.arange(600) // 20)
    whole = dg.minimum_detectable_gap(d.confidence[0], d.correct[0], **kw)
    n_cols = 1 if alternative == "monotone" else 4
    monkeypatch.setattr(power, "BATCH_ELEMENTS", 7 * 600 * n_cols)
    jax.clear_caches()  # the batch size is fixed when the function is traced
    batched = dg.minimum_detectable_gap(d.confidence[0], d.correct[0], **kw)
    np.testing.assert_array_equal(batched.gaps, whole.gaps)
    np.testing.assert_allclose(batched.power, whole.power, atol=1.5 / 30)  # at most one dataset
    assert np.mean(batched.power == whole.power) >= 0.9


@pytest.mark.parametrize("n_units", [4, 20])
def test_simulated_randomized_p_matches_numpy(n_units):
    """`p_value="randomized"` in the power simulation: all 2^K patterns (K = 4; the identity among
    them) give p = (#{>} + U #{=}) / 2^K, random flips (K = 20) (#{>} + U (1 + #{=})) / (1 + M);
    statistics on the null's own values, so ties occur. Numpy reference, per U."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(n_units)
    w = rng.normal(size=(n_units, 1))
    with jax.enable_x64(True):
        ref = np.asarray(power._reference(jax.random.key(0), n_units, 1))
        null = np.abs(ref @ w)[:, 0]
        for z in (null[3], null[5], 0.5 * null.max()):
            above, ties = np.sum(null > z * (1 + 1e-9)), np.sum(np.abs(null - z) <= 1e-9 * z)
            for u in (0.05, 0.5, 0.95):
                if n_units == 4:
                    want = (above + u * ties) / len(null)
                else:
                    want = (above + u * (1 + ties)) / (1 + len(null))
                for alpha in (0.02, 0.05, 0.2, 0.5):
                    got = power._rejects(jnp.asarray([z]), jnp.asarray(w), jnp.asarray(ref), alpha,
                                         "monotone", jnp.asarray(u))
                    assert bool(got) == (want <= alpha), (z, u, alpha, want)
