"""Tests for routecal.files.predictions.load_predictions: good files load; every bad file is named."""

import numpy as np
import pytest

from routecal.files.predictions import load_predictions


def _arrays(n=40, c=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"probs": probs, "labels": rng.integers(0, c, n), "H": rng.uniform(size=(n, 2))}


def test_a_good_file_loads_as_saved(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "p.npz", **a)
    d = load_predictions(tmp_path / "p.npz")
    for k, v in a.items():
        np.testing.assert_array_equal(d[k], v)


@pytest.mark.parametrize(
    "kind", ["missing", "truncated", "bit_flip", "not_zip", "npy", "no_labels", "bad_probs"]
)
def test_each_bad_file_is_named(tmp_path, kind):
    p = tmp_path / "preds.npz"
    a = _arrays()
    np.savez(p, **a)
    good = p.read_bytes()
    if kind == "missing":
        p.unlink()
    elif kind == "truncated":
        p.write_bytes(good[: len(good) - 200])
    elif kind == "bit_flip":  # inside the probs array's bytes: caught by the zip CRC
        b = bytearray(good)
        b[200] ^= 0x10
        p.write_bytes(bytes(b))
    elif kind == "not_zip":
        p.write_text("probs,labels\n")
    elif kind == "npy":
        with open(p, "wb") as f:
            np.save(f, a["probs"])
    elif kind == "no_labels":
        np.savez(p, probs=a["probs"])
    elif kind == "bad_probs":
        np.savez(p, probs=a["probs"] * 2, labels=a["labels"])
    with pytest.raises(ValueError, match=r"predictions: .*preds\.npz") as e:
        load_predictions(p)
    expected = {"npy": "single .npy array", "not_zip": "not an .npz archive",
                "no_labels": "no 'labels' array", "bad_probs": "probs", "missing": "no such file",
                "bit_flip": "CRC"}
    assert expected.get(kind, "") in str(e.value)


def test_check_compatible_names_class_and_routing_mismatches():
    from routecal.files.predictions import check_compatible

    a, b = _arrays(c=3), _arrays(c=3, seed=1)
    check_compatible(a, b, ("calib.npz", "test.npz"))  # same task, same routing arrays
    with pytest.raises(ValueError, match=r"calib\.npz has 3 classes but test\.npz has 5"):
        check_compatible(a, _arrays(c=5), ("calib.npz", "test.npz"))
    with pytest.raises(ValueError, match=r"H: \(2,\) vs \(4,\)"):
        check_compatible(a, {**b, "H": np.zeros((40, 4))}, ("calib.npz", "test.npz"))
    with pytest.raises(ValueError, match=r"routing_gate: missing vs \(\)"):
        check_compatible(a, {**b, "routing_gate": np.zeros(40)}, ("calib.npz", "test.npz"))


def test_constant_features_are_found_and_the_rest_kept():
    from routecal.files.predictions import constant_features, routing_features, routing_predictions

    rng = np.random.default_rng(0)
    feats = {"a": np.ones(30), "b": rng.normal(size=30), "c": np.r_[np.nan, rng.normal(size=29)]}
    assert constant_features(feats) == ["a", "c"]
    kept = {k: v for k, v in feats.items() if k == "b"}
    p = routing_predictions(_arrays(n=30), kept)
    assert routing_features(p).keys() == {"b"}
    np.testing.assert_array_equal(routing_features(p)["b"], feats["b"])


def test_router_summaries_give_layer_means_and_per_layer_columns():
    from routecal.files.predictions import routing_features

    rng = np.random.default_rng(0)
    ent, margin = rng.uniform(size=(7, 3)), rng.uniform(size=(7, 3))
    f = routing_features({"router_entropy_norm": ent, "top1_margin": margin})
    np.testing.assert_allclose(f["router_entropy_norm_mean"], (ent[:, 0] + ent[:, 1] + ent[:, 2]) / 3)
    np.testing.assert_allclose(f["top1_margin_mean"], margin.sum(axis=1) / 3)
    for m in range(3):
        np.testing.assert_array_equal(f[f"top1_margin_l{m}"], margin[:, m])
    assert "router_logit_spread_mean" not in f  # absent column, no feature
