"""Subgroup gaps and the within-bin permutation test against plain numpy loops."""

import jax
import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from routecal import parallel
from routecal.stats import diagnostics as dg
from routecal.stats import simulation


def _ref_table(c, y, r, m=15, g=3, binning="width"):
    """Independent numpy reference: loop over bins, stable argsort, numpy.array_split."""
    b = np.zeros(len(c), int)
    for i, x in enumerate(c):  # (k/m, (k+1)/m] -> k, 0 -> 0
        b[i] = 0 if x == 0 else min(int(np.ceil(x * m)) - 1, m - 1)
    if binning == "mass":
        for k, part in enumerate(np.array_split(np.argsort(c, kind="stable"), m)):
            b[part] = k
    gaps, wg, members = np.zeros(m), 0.0, []
    for k in range(m):
        idx = np.flatnonzero(b == k)
        # group of each member: the numpy.array_split part of its tie block's mid-rank
        part_of = np.concatenate([np.full(len(p), j) for j, p in enumerate(np.array_split(
            np.arange(len(idx)), g))]).astype(int)
        vals = np.sort(r[idx])
        first = np.searchsorted(vals, r[idx], "left")
        last = np.searchsorted(vals, r[idx], "right") - 1
        grp = part_of[(first + last) // 2]
        top, bot = idx[grp == g - 1], idx[grp == 0]
        if len(top) == 0 or len(bot) == 0:
            members.append(None)
            continue
        gaps[k] = (y[top].mean() - c[top].mean()) - (y[bot].mean() - c[bot].mean())
        wg += len(idx) / len(c) * abs(gaps[k])
        members.append((idx, len(top), len(bot)))
    return gaps, wg, members


def _ref_null(c, y, members, n_perm, rng):
    """Plain numpy loop: per-bin rng.permutation of the residuals."""
    res = y - c
    out = np.empty(n_perm)
    for t in range(n_perm):
        s = 0.0
        for mem in members:
            if mem is None:
                continue
            idx, kt, kb = mem
            p = rng.permutation(res[idx])
            s += len(idx) / len(c) * abs(p[-kt:].mean() - p[:kb].mean())
        out[t] = s
    return out


def _data(n=300, effect=0.15, seed=0):
    d = simulation.simulate(jax.random.key(seed), n, effect=effect, conf_low=0.0)
    return d.confidence[0], d.correct[0], d.routing[0]


def test_subgroup_gaps_matches_reference():
    c, y, r = _data(n=500)
    c[:3] = [0.0, 1.0, 1.0]  # exact 0 and 1 land in the first / last bin
    out = dg.subgroup_gaps(c, y, r, n_bins=15, n_groups=3)
    gaps, wg, _ = _ref_table(c, y, r)
    np.testing.assert_allclose(out.gap, gaps, atol=1e-12)
    assert out.weighted_gap == pytest.approx(wg, abs=1e-12)
    assert out.count.sum() == 500 and out.count[0] >= 1 and out.count[-1] >= 2
    mass = dg.subgroup_gaps(c, y, r, n_bins=15, n_groups=3, binning="mass")
    gaps_m, wg_m, _ = _ref_table(c, y, r, binning="mass")
    np.testing.assert_allclose(mass.gap, gaps_m, atol=1e-12)
    assert mass.weighted_gap == pytest.approx(wg_m, abs=1e-12)
    np.testing.assert_array_equal(mass.count, [34] * 5 + [33] * 10)
    with pytest.raises(ValueError, match="binning"):
        dg.subgroup_gaps(c, y, r, binning="quantile")


def test_small_bins_contribute_nothing_and_ties_are_cut_by_value():
    # bin 0 (c in [0, 0.5]) has 2 members < 3 groups; bin 1 has 7 with tied routing
    c = np.array([0.1, 0.2] + [0.9] * 7)
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0], float)
    r = np.zeros(9)  # all tied: mid-rank 3 of 7 -> the middle group; no top, no bottom
    out = dg.subgroup_gaps(c, y, r, n_bins=2, n_groups=3)
    assert out.gap[0] == 0 and out.n_top[0] == 0
    assert out.n_top[1] == 0 and out.weighted_gap == 0.0
    # binary routing in bin 1: the three 1s are the top group, the four 0s the bottom group
    r = np.array([0, 0, 1, 0, 1, 0, 0, 1, 0.0])
    out = dg.subgroup_gaps(c, y, r, n_bins=2, n_groups=3)
    assert (out.n_bottom[1], out.n_top[1]) == (4, 3)
    # top rows 2, 4, 7 -> y = 1, 0, 0; bottom rows 3, 5, 6, 8 -> y = 1, 0, 1, 0 (same confidence)
    assert out.gap[1] == pytest.approx(1 / 3 - 1 / 2)
    assert out.weighted_gap == pytest.approx(7 / 9 * 1 / 6)


def test_statistic_and_null_invariant_to_row_order_under_ties():
    """Issue 11, point 1: routing in {0, 1, 2}; reordering rows left the statistic off by 0.05."""
    rng = np.random.default_rng(4)
    c = rng.uniform(0.3, 1.0, 600)
    y = (rng.random(600) < c).astype(float)
    r = rng.integers(0, 3, 600).astype(float)
    stats = []
    for t in range(5):
        perm = rng.permutation(600) if t else np.arange(600)
        stats.append(dg.subgroup_gaps(c[perm], y[perm], r[perm]).weighted_gap)
    np.testing.assert_allclose(stats, stats[0], rtol=1e-12)
    _, wg, _ = _ref_table(c, y, r)
    assert stats[0] == pytest.approx(wg, abs=1e-12)
    # constant routing stored correct-first: no groups, statistic 0, p = 1
    order = np.argsort(-y, kind="stable")
    res = dg.within_bin_permutation_test(
        c[order], y[order], np.zeros(600), key=0, n_permutations=99
    )
    assert res.statistic == 0.0 and res.p_value == 1.0


def test_p_value_matches_numpy_loop_within_monte_carlo_error():
    c, y, r = _data(n=300, effect=0.12, seed=3)
    _, wg, members = _ref_table(c, y, r)
    res = dg.within_bin_permutation_test(c, y, r, key=jax.random.key(1), n_permutations=20_000)
    assert res.statistic == pytest.approx(wg, abs=1e-12)
    assert res.null.shape == (20_000,)
    ref_null = _ref_null(c, y, members, 4000, np.random.default_rng(0))
    p_ref = (1 + np.sum(ref_null >= wg - 1e-12)) / (1 + len(ref_null))
    p_own = (1 + np.sum(res.null >= wg - 1e-12)) / (1 + len(res.null))
    assert res.p_value == pytest.approx(p_own)
    se = np.sqrt(p_ref * (1 - p_ref) * (1 / 4000 + 1 / 20_000))
    assert 0.01 < p_ref < 0.99 and abs(res.p_value - p_ref) < 4 * se
    # the whole null distribution agrees (two-sample KS at a generous level)
    from scipy.stats import ks_2samp

    assert ks_2samp(res.null, ref_null).pvalue > 1e-3


def test_identity_ties_count_and_p_value_floor():
    # every residual identical within its bin: every permutation reproduces the statistic exactly
    c = np.repeat([0.25, 0.75], 120)
    y = np.repeat([1.0, 0.0], 120)
    r = np.arange(240.0)
    res = dg.within_bin_permutation_test(c, y, r, key=jax.random.key(0), n_permutations=400, n_bins=10)
    assert res.statistic == 0.0 and res.p_value == 1.0


def test_eight_devices_match_one_device():
    assert len(jax.devices()) == 8
    c, y, r = _data(n=240, seed=5)
    # 8 chunks of 50 permutations: one chunk per device on the 8-device mesh
    kw = dict(key=jax.random.key(7), n_permutations=400, n_bins=10, chunk_size=50)
    one = dg.within_bin_permutation_test(c, y, r, mesh=parallel.make_mesh(1), **kw)
    eight = dg.within_bin_permutation_test(c, y, r, mesh=parallel.make_mesh(8), **kw)
    np.testing.assert_array_equal(one.null, eight.null)
    assert one.p_value == eight.p_value and one.statistic == eight.statistic


def test_batch_equals_single_calls():
    d = simulation.null_data(jax.random.key(2), 240, n_datasets=3)
    key = jax.random.key(3)
    batch = dg.permutation_test_batch(*d, key=key, n_permutations=400, n_bins=10)
    for i in range(3):  # same shapes as the grid test below: one compile serves both
        single = dg.within_bin_permutation_test(
            d.confidence[i], d.correct[i], d.routing[i], key=jax.random.fold_in(key, i),
            n_permutations=400, n_bins=10,
        )
        np.testing.assert_allclose(batch.null[i], single.null, rtol=1e-12)
        assert batch.p_value[i] == pytest.approx(single.p_value)


def test_adjust_pvalues_matches_statsmodels():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005, 0.5, 0.04])
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        np.testing.assert_allclose(dg.adjust_pvalues(p, ours), multipletests(p, method=theirs)[1])


def test_permutation_grid_rows():
    cells = {
        ("H_1", 0): _data(n=240, effect=0.0, seed=11),
        ("H_1", 1): _data(n=240, effect=0.4, seed=12),
        ("D_var", 0): _data(n=240, effect=0.0, seed=13),
    }
    rows = dg.permutation_grid(cells, key=jax.random.key(0), n_permutations=400, n_bins=10)
    assert [row.name for row in rows] == list(cells)
    ps = np.array([row.p_value for row in rows])
    np.testing.assert_allclose([row.p_holm for row in rows], multipletests(ps, method="holm")[1])
    np.testing.assert_allclose([row.p_bh for row in rows], multipletests(ps, method="fdr_bh")[1])
    assert rows[1].p_value < 0.01  # the planted cell
    single = dg.within_bin_permutation_test(
        *cells[("H_1", 1)], key=jax.random.fold_in(jax.random.key(0), 1), n_permutations=400,
        n_bins=10,
    )
    assert rows[1].statistic == single.statistic and rows[1].p_value == single.p_value


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(confidence=np.r_[np.nan, np.full(59, 0.5)]), "confidence"),
        (dict(routing=np.r_[np.inf, np.zeros(59)]), "routing"),
        (dict(confidence=np.r_[1.5, np.full(59, 0.5)]), "confidence"),
        (dict(correct=np.r_[2.0, np.zeros(59)]), "correct"),
        (dict(routing=np.zeros(59)), "mismatched lengths"),
        (dict(confidence=np.full(40, 0.5), correct=np.zeros(40), routing=np.zeros(40)),
         "fewer examples than bins x groups"),
        (dict(n_permutations=0), "n_permutations"),
        (dict(n_groups=1), "n_groups"),
    ],
)
def test_bad_input_raises_naming_argument(kwargs, match):
    base = dict(confidence=np.full(60, 0.5), correct=np.zeros(60), routing=np.zeros(60))
    base.update(kwargs)
    extra = {k: base.pop(k) for k in ("n_permutations", "n_groups") if k in base}
    with pytest.raises(ValueError, match=match):
        dg.within_bin_permutation_test(**base, key=jax.random.key(0), **extra)
    if not extra:
        with pytest.raises(ValueError, match=match):
            dg.subgroup_gaps(**base)
    with pytest.raises(ValueError, match="method"):
        dg.adjust_pvalues([0.1], "bonferroni")
