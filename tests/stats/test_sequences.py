"""routecal.stats.sequences and the token predictions schema (`files.predictions`, `ProbeData.from_tokens`):
token features, sequence thinning and shuffles, against loops."""

from __future__ import annotations

import numpy as np
import pytest

from routecal.files import predictions
from routecal.probes.data import ProbeData
from routecal.stats import sequences


def _tokens(n_seq=6, seq_len=5, s=3, seed=0, ragged=False):
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, seq_len + 1, n_seq) if ragged else np.full(n_seq, seq_len)
    seq = np.repeat(np.arange(n_seq) * 7 + 3, lens)  # non-dense ids
    pos = np.concatenate([np.arange(k) for k in lens])
    n = len(seq)
    return {
        "confidence": rng.uniform(0.05, 0.95, n), "correct": rng.integers(0, 2, n),
        "entropy": rng.gamma(2, 1, n), "seq_id": seq, "position": pos,
        "H_norm": rng.uniform(0, 1, (n, s)), "depth_var": rng.gamma(2, 1, (n, s)),
        "depth_mean": rng.uniform(0, 3, (n, s)), "alpha_mean": rng.uniform(0, 1, (s, s + 1)),
    }


def test_sequence_mean_matches_a_loop():
    t = _tokens(ragged=True)
    v = t["confidence"]
    ref = np.array([v[t["seq_id"] == q].mean() for q in t["seq_id"]])
    np.testing.assert_allclose(sequences.sequence_mean(v, t["seq_id"]), ref, rtol=1e-12)


def test_position_aware_features_are_departures_from_the_sequence_mean():
    t = predictions.token_arrays(_tokens(ragged=True))
    feats = predictions.routing_features(t)
    for f in predictions.POSITION_AWARE:
        rel = feats[f"{f}_vs_seq"]
        for q in np.unique(t["seq_id"]):
            m = t["seq_id"] == q
            np.testing.assert_allclose(rel[m], feats[f][m] - feats[f][m].mean(), atol=1e-12)
    assert "H_mean_vs_seq" not in predictions.routing_features(
        {k: v for k, v in t.items() if k not in ("H_norm", "depth_var", "depth_mean")})


def test_thin_keeps_whole_sequences_deterministically():
    t = _tokens(n_seq=30, ragged=True)
    idx = sequences.thin_sequences(t["seq_id"], 40, seed=1)
    kept = np.unique(t["seq_id"][idx])
    assert len(idx) <= 40 and len(idx) == np.isin(t["seq_id"], kept).sum()
    np.testing.assert_array_equal(idx, sequences.thin_sequences(t["seq_id"], 40, seed=1))
    assert not np.array_equal(idx, sequences.thin_sequences(t["seq_id"], 40, seed=2))
    np.testing.assert_array_equal(sequences.thin_sequences(t["seq_id"], None, seed=0),
                                  np.arange(len(t["seq_id"])))
    with pytest.raises(ValueError, match="max_tokens"):
        sequences.thin_sequences(np.repeat([0, 1], 10), 5, seed=0)


def test_shuffle_across_sequences_matches_a_loop():
    t = _tokens(n_seq=7, ragged=True, seed=3)
    prof = t["H_norm"]
    out = sequences.shuffle_across_sequences(prof, t["seq_id"], t["position"], seed=5)
    # Loop reference: sequences in the generator's cycle; token of rank r in sequence q takes the
    # row of rank r mod len(target) in target(q), ranks by position.
    uniq = np.unique(t["seq_id"])
    cycle = np.random.default_rng(5).permutation(len(uniq))
    target = {uniq[cycle[i]]: uniq[cycle[(i + 1) % len(uniq)]] for i in range(len(uniq))}
    for i in range(len(prof)):
        q = t["seq_id"][i]
        mine = np.flatnonzero(t["seq_id"] == q)
        rank = int(np.sum(t["position"][mine] < t["position"][i]))
        theirs = np.flatnonzero(t["seq_id"] == target[q])
        theirs = theirs[np.argsort(t["position"][theirs])]
        np.testing.assert_array_equal(out[i], prof[theirs[rank % len(theirs)]])
        assert target[q] != q
    with pytest.raises(ValueError, match="two sequences"):
        sequences.shuffle_across_sequences(prof[:3], np.zeros(3), np.arange(3), seed=0)


def test_probe_data_and_concat():
    t = predictions.token_arrays(_tokens())
    pd = ProbeData.from_tokens(t)
    assert pd.routing["H"].shape == t["H_norm"].shape and "depth_var_mean_vs_seq" in pd.routing
    shuffled = ProbeData.from_tokens(t, shuffle_seed=0)
    assert not np.array_equal(shuffled.routing["H"], pd.routing["H"])
    np.testing.assert_array_equal(shuffled.routing["depth_var_mean"], pd.routing["depth_var_mean"])
    both = predictions.concat_tokens([t, t])
    assert len(np.unique(both["seq_id"])) == 2 * len(np.unique(t["seq_id"]))
    assert "alpha_mean" not in both and len(both["confidence"]) == 2 * len(t["confidence"])


def test_token_arrays_names_what_is_wrong():
    t = _tokens()
    with pytest.raises(ValueError, match=r"calib: token predictions lack \['seq_id'\]"):
        predictions.token_arrays({k: v for k, v in t.items() if k != "seq_id"}, "calib")
    with pytest.raises(ValueError, match="confidence"):
        predictions.token_arrays({**t, "confidence": t["confidence"] + 1.0})
    with pytest.raises(ValueError):
        predictions.token_arrays({**t, "H_norm": t["H_norm"][:-1]})


def test_cluster_sizes_and_ids_against_numpy():
    rng = np.random.default_rng(3)
    ids = rng.choice([4, 9, 11, 40, 41], size=500, p=[0.5, 0.2, 0.2, 0.05, 0.05])
    n = np.array([np.sum(ids == k) for k in np.unique(ids)], float)
    got = sequences.cluster_sizes(ids)
    assert got["n_clusters"] == len(n) == 5
    assert got["n_eff_clusters"] == pytest.approx(n.sum() ** 2 / (n**2).sum(), rel=1e-12)
    assert sequences.cluster_sizes(np.repeat(np.arange(7), 3))["n_eff_clusters"] == pytest.approx(7)
    t = _tokens()
    t["doc_id"] = t["seq_id"] // 10
    arr = predictions.token_arrays(t, "p")
    np.testing.assert_array_equal(predictions.cluster_ids(arr, "document"), t["seq_id"] // 10)
    np.testing.assert_array_equal(predictions.cluster_ids(arr, "row"), t["seq_id"])
    with pytest.raises(ValueError, match="diagnostics.cluster_unit: unknown 'file'"):
        predictions.cluster_ids(arr, "file")
    del t["doc_id"]
    with pytest.raises(ValueError, match=r"p: token predictions have no 'doc_id'"):
        predictions.cluster_ids(predictions.token_arrays(t, "p"), "document", "p")


@pytest.mark.parametrize("bad", [-1, 0.5, np.nan, True])
def test_token_arrays_validate_doc_id_like_seq_id(bad):
    for key in ("doc_id", "seq_id"):
        t = _tokens()
        t[key] = np.zeros(len(t["seq_id"]), type(bad) if bad is not True else bool)
        t[key][0] = bad
        with pytest.raises(ValueError, match=rf"p\['{key}'\]: expected integer ids"):
            predictions.token_arrays(t, "p")


def test_concat_tokens_offsets_document_ids_per_part():
    a, b = _tokens(seed=1), _tokens(seed=2)
    a["doc_id"], b["doc_id"] = a["seq_id"] // 10, b["seq_id"] // 10
    out = predictions.concat_tokens([a, b])
    na = len(a["seq_id"])
    assert set(out["doc_id"][:na]).isdisjoint(out["doc_id"][na:])
    assert len(np.unique(out["doc_id"])) == len(np.unique(a["doc_id"])) + len(
        np.unique(b["doc_id"]))
