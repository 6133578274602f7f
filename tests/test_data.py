"""Tests for routecal.data: digits (local TFDS build), synthetic task, TFDS loader, shifts."""

from __future__ import annotations

import io

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits as sk_load_digits

from routecal.data import Dataset, Split, embedded, load_dataset, shift, synthetic

# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """A TFDS data_dir with routecal_digits built into it once for this module."""
    d = tmp_path_factory.mktemp("tfds_digits")
    embedded.build_digits(d)
    return d


def digits_cfg(data_dir, **kw):
    cfg = dict(name="digits", seed=0, patch_size=2, data_dir=str(data_dir))
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


# ------------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------------


def test_digits_tfds_build_matches_sklearn(digits_dir):
    # The array_record files exist, and reading them back gives exactly sklearn's arrays.
    files = list((digits_dir / "routecal_digits" / "1.0.0").glob("*.array_record*"))
    assert files, "no array_record file written"
    images, labels = embedded.read_digits(digits_dir)
    d = sk_load_digits()
    np.testing.assert_array_equal(images, d.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, d.target)
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)


def test_digits_splits_sizes_stratified_and_deterministic(digits_dir):
    ds = load_dataset(digits_cfg(digits_dir))
    assert isinstance(ds, Dataset) and ds.name == "digits" and ds.num_classes == 10
    n = [len(ds.train), len(ds.calib), len(ds.test)]
    assert sum(n) == 1797
    # 60 / 20 / 20 within rounding
    np.testing.assert_allclose(np.array(n) / 1797, [0.6, 0.2, 0.2], atol=2 / 1797)
    assert ds.seq_len == 16 and ds.token_dim == 4
    assert ds.train.tokens.dtype == np.float32 and ds.train.labels.dtype == np.int32
    assert ds.train.tokens.min() >= 0 and ds.train.tokens.max() <= 1
    # Stratified: each split's class proportions match the full data's within one example.
    full = np.bincount(sk_load_digits().target, minlength=10) / 1797
    for s in (ds.train, ds.calib, ds.test):
        counts = np.bincount(s.labels, minlength=10)
        assert np.all(np.abs(counts - full * len(s)) <= 1.0 + 1e-9), counts
    # Splits are disjoint and cover the data: compare the reconstructed images as a multiset.
    all_tokens = np.concatenate([ds.train.tokens, ds.calib.tokens, ds.test.tokens])
    all_images = embedded.patches_to_images(all_tokens, (8, 8), 2) * 16
    ref = sk_load_digits().images
    key = lambda a: sorted(map(tuple, a.reshape(len(a), -1).round().astype(np.int64).tolist()))
    assert key(all_images) == key(ref)
    # Same seed, same arrays; other seed, other splits.
    again = load_dataset(digits_cfg(digits_dir))
    np.testing.assert_array_equal(again.train.tokens, ds.train.tokens)
    np.testing.assert_array_equal(again.test.labels, ds.test.labels)
    other = load_dataset(digits_cfg(digits_dir, seed=1))
    assert len(other.test) == len(ds.test)
    assert not np.array_equal(other.test.tokens, ds.test.tokens)


def test_digits_patch_size_and_defaults(digits_dir):
    ds4 = load_dataset(digits_cfg(digits_dir, patch_size=4))
    assert ds4.seq_len == 4 and ds4.token_dim == 16
    ds2 = load_dataset(digits_cfg(digits_dir))
    # Same split indices whatever the patch size: the images are the same.
    np.testing.assert_array_equal(
        embedded.patches_to_images(ds4.test.tokens, (8, 8), 4),
        embedded.patches_to_images(ds2.test.tokens, (8, 8), 2),
    )
    # Missing keys fall back to documented defaults (seed 0, patch 2).
    minimal = load_dataset(ml_collections.ConfigDict(dict(name="digits", data_dir=str(digits_dir))))
    np.testing.assert_array_equal(minimal.train.tokens, ds2.train.tokens)


def test_patches_round_trip_and_layout():
    rng = np.random.default_rng(0)
    images = rng.random((3, 8, 8))
    tokens = embedded.images_to_patches(images, 2)
    assert tokens.shape == (3, 16, 4)
    # Token t = (row block i, col block j) in row-major order; features row-major inside the patch.
    i, j = 1, 2
    np.testing.assert_array_equal(
        tokens[:, i * 4 + j], images[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].reshape(3, 4)
    )
    np.testing.assert_array_equal(embedded.patches_to_images(tokens, (8, 8), 2), images)
    colour = rng.random((2, 32, 32, 3))
    ctokens = embedded.images_to_patches(colour, 4)
    assert ctokens.shape == (2, 64, 48)
    np.testing.assert_array_equal(ctokens[:, 9], colour[:, 4:8, 4:8, :].reshape(2, 48))
    np.testing.assert_array_equal(embedded.patches_to_images(ctokens, (32, 32, 3), 4), colour)


@pytest.mark.parametrize("patch", [3, 0, -2, 2.0])
def test_bad_patch_size(digits_dir, patch):
    with pytest.raises(ValueError, match="patch_size"):
        load_dataset(digits_cfg(digits_dir, patch_size=patch))


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset(ml_collections.ConfigDict(dict(name="mnist")))


def test_split_validation():
    with pytest.raises(ValueError, match="labels"):
        Split(np.zeros((3, 2, 2), np.float32), np.zeros(4, np.int32))


# ------------------------------------------------------------------------------------------------
# synthetic
# ------------------------------------------------------------------------------------------------


def synth_cfg(**kw):
    cfg = dict(
        name="synthetic",
        seed=0,
        n_train=300,
        n_calib=100,
        n_test=200,
        seq_len=4,
        token_dim=3,
        num_classes=5,
        difficulty=0.5,
    )
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def ncm_accuracy(ds: Dataset) -> float:
    """Nearest-class-mean classifier fitted on train, scored on test."""
    xtr = ds.train.tokens.reshape(len(ds.train), -1)
    xte = ds.test.tokens.reshape(len(ds.test), -1)
    means = np.stack([xtr[ds.train.labels == c].mean(0) for c in range(ds.num_classes)])
    d2 = ((xte[:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(d2.argmin(1) == ds.test.labels))


def test_synthetic_shapes_balance_and_determinism():
    ds = load_dataset(synth_cfg())
    assert ds.name == "synthetic" and ds.num_classes == 5
    assert ds.train.tokens.shape == (300, 4, 3) and ds.train.tokens.dtype == np.float32
    assert (len(ds.calib), len(ds.test)) == (100, 200)
    for s in (ds.train, ds.calib, ds.test):
        counts = np.bincount(s.labels, minlength=5)
        assert counts.max() - counts.min() <= 1 and s.labels.dtype == np.int32
    again = load_dataset(synth_cfg())
    for name in ("train", "calib", "test"):
        np.testing.assert_array_equal(again.split(name).tokens, ds.split(name).tokens)
        np.testing.assert_array_equal(again.split(name).labels, ds.split(name).labels)
    other = load_dataset(synth_cfg(seed=1))
    assert not np.allclose(other.train.tokens, ds.train.tokens)
    # Independent streams: a different n_test leaves the train split unchanged.
    np.testing.assert_array_equal(load_dataset(synth_cfg(n_test=7)).train.tokens, ds.train.tokens)
    # Noise-free: every example equals its class mean.
    clean = load_dataset(synth_cfg(difficulty=0.0))
    means = synthetic.class_means(0, 5, 4, 3)
    np.testing.assert_allclose(clean.test.tokens, means[clean.test.labels], rtol=1e-6)


def test_synthetic_difficulty_knob_matches_closed_form():
    # Two classes, true means: Bayes accuracy 1 - Phi(-d / (2 sigma)), d = ||mu_0 - mu_1||.
    from scipy.stats import norm

    n = 4000
    for difficulty in (0.5, 1.0, 2.0):
        ds = load_dataset(
            synth_cfg(num_classes=2, n_test=n, seq_len=8, token_dim=4, difficulty=difficulty)
        )
        mu = synthetic.class_means(0, 2, 8, 4).reshape(2, -1)
        x = ds.test.tokens.reshape(n, -1)
        pred = ((x[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
        acc = np.mean(pred == ds.test.labels)
        expected = norm.cdf(np.linalg.norm(mu[0] - mu[1]) / (2 * difficulty))
        assert abs(acc - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3, (
            difficulty,
            acc,
            expected,
        )


def test_synthetic_difficulty_lowers_separability():
    accs = [ncm_accuracy(load_dataset(synth_cfg(difficulty=d))) for d in (0.1, 0.5, 1.0, 3.0)]
    assert accs[0] > 0.99
    assert all(a > b for a, b in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < 0.5


@pytest.mark.parametrize(
    "bad",
    [
        dict(difficulty=-0.1),
        dict(difficulty=float("nan")),
        dict(n_train=0),
        dict(num_classes=1),
        dict(seq_len=2.5),
    ],
)
def test_synthetic_bad_input(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        load_dataset(synth_cfg(**bad))


def test_synthetic_defaults():
    ds = load_dataset(ml_collections.ConfigDict(dict(name="synthetic")))
    d = synthetic.SYNTHETIC_DEFAULTS
    assert ds.train.tokens.shape == (d["n_train"], d["seq_len"], d["token_dim"])
    assert ds.num_classes == d["num_classes"] and len(ds.test) == d["n_test"]


# ------------------------------------------------------------------------------------------------
# shifts
# ------------------------------------------------------------------------------------------------


def test_pixel_noise(digits_dir):
    test = load_dataset(digits_cfg(digits_dir)).test
    raw = shift.pixel_noise(test, 0.3, seed=1, clip=False)
    diff = (raw.tokens - test.tokens).ravel()
    # 360 * 64 draws: SE of the sample std is ~0.3 / sqrt(2 * 23040) ~ 0.0014.
    assert abs(diff.std() - 0.3) < 0.01 and abs(diff.mean()) < 0.01
    clipped = shift.pixel_noise(test, 0.3, seed=1)
    np.testing.assert_allclose(clipped.tokens, np.clip(raw.tokens, 0, 1), atol=1e-6)
    assert clipped.tokens.min() >= 0 and clipped.tokens.max() <= 1
    np.testing.assert_array_equal(clipped.labels, test.labels)
    assert not np.allclose(shift.pixel_noise(test, 0.3, seed=2).tokens, clipped.tokens)
    np.testing.assert_array_equal(shift.pixel_noise(test, 0.0).tokens, test.tokens)
    with pytest.raises(ValueError, match="std"):
        shift.pixel_noise(test, -1.0)


def test_invert(digits_dir):
    test = load_dataset(digits_cfg(digits_dir)).test
    inv = shift.invert(test)
    np.testing.assert_allclose(inv.tokens, 1.0 - test.tokens, atol=1e-7)
    np.testing.assert_allclose(shift.invert(inv).tokens, test.tokens, atol=1e-6)
    np.testing.assert_array_equal(inv.labels, test.labels)


def test_held_out_classes(digits_dir):
    ds = load_dataset(digits_cfg(digits_dir))
    ind, ood = shift.held_out_classes(ds, [3, 7])
    assert ind.num_classes == 8 and ind.seq_len == ds.seq_len
    # Relabelling: old ids 0,1,2,4,5,6,8,9 -> 0..7 in order.
    old_of_new = np.array([0, 1, 2, 4, 5, 6, 8, 9])
    for name in ("train", "calib", "test"):
        s_in, s_full = ind.split(name), ds.split(name)
        assert s_in.labels.min() >= 0 and s_in.labels.max() <= 7
        keep = ~np.isin(s_full.labels, [3, 7])
        assert len(s_in) == keep.sum()
        np.testing.assert_array_equal(old_of_new[s_in.labels], s_full.labels[keep])
        np.testing.assert_array_equal(s_in.tokens, s_full.tokens[keep])
    assert set(np.unique(ood.labels)) == {3, 7}
    assert len(ood) == np.isin(ds.test.labels, [3, 7]).sum()
    # The dispatcher gives the same thing; corruptions keep the in-distribution dataset.
    ind2, ood2 = shift.make_ood(ds, "held_out_classes", classes=(7, 3))
    np.testing.assert_array_equal(ood2.tokens, ood.tokens)
    assert ind2.num_classes == 8
    same, inv = shift.make_ood(ds, "invert")
    assert same is ds and len(inv) == len(ds.test)
    _, noisy = shift.make_ood(ds, "pixel_noise", std=0.1, seed=0)
    np.testing.assert_array_equal(noisy.tokens, shift.pixel_noise(ds.test, 0.1, 0).tokens)


@pytest.mark.parametrize(
    "classes, match",
    [
        ([], "at least one"),
        ([10], r"\[0, 10\)"),
        ([1, 1], "duplicates"),
        (list(range(9)), "fewer than 2"),
    ],
)
def test_held_out_classes_bad_input(digits_dir, classes, match):
    ds = load_dataset(digits_cfg(digits_dir))
    with pytest.raises(ValueError, match=match):
        shift.held_out_classes(ds, classes)


def test_make_ood_unknown_kind():
    ds = load_dataset(synth_cfg())
    with pytest.raises(ValueError, match="kind"):
        shift.make_ood(ds, "blur")


# ------------------------------------------------------------------------------------------------
# TFDS loader, on small datasets built here (never downloads)
# ------------------------------------------------------------------------------------------------


def _png(image_HxWxC: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_HxWxC.squeeze(-1) if image_HxWxC.shape[-1] == 1 else image_HxWxC).save(
        buf, format="png"
    )
    return buf.getvalue()


def _test_images(split: str, n: int, shape: tuple[int, int, int]):
    """Deterministic uint8 images whose first pixel encodes (split, index): lets tests check rows."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    labels = np.arange(n) % 3
    return images, labels


class _TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """mnist-like: PNG-encoded `image` [H, W, C] uint8, `label` ClassLabel(3), train/test splits."""

    VERSION = tfds.core.Version("1.0.0")
    SHAPE = (12, 12, 1)
    N = {"train": 40, "test": 15}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self.SHAPE),
                    "label": tfds.features.ClassLabel(num_classes=3),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in ("train", "test")}

    def _generate_examples(self, split="train"):
        images, labels = _test_images(split, self.N[split], self.SHAPE)
        for i, (im, y) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": _png(im), "label": int(y)}


class RoutecalTestGray(_TinyImages):
    name = "routecal_test_gray"


class RoutecalTestColour(_TinyImages):
    name = "routecal_test_colour"
    SHAPE = (8, 8, 3)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfds_user")
    with embedded.quiet_tfds():
        for cls in (RoutecalTestGray, RoutecalTestColour):
            cls(data_dir=str(d), file_format="array_record").download_and_prepare()
    return d


def tfds_cfg(name, data_dir, **kw):
    cfg = dict(
        name=f"tfds:{name}",
        seed=0,
        patch_size=4,
        data_dir=str(data_dir),
        calib_fraction=0.25,
        max_examples=None,
        cache_decoded=False,
    )
    cfg.update(kw)
    return ml_collections.ConfigDict(cfg)


def _first_pixel(tokens):
    return np.rint(tokens[:, 0, 0] * 255).astype(int)


def test_tfds_loader_reads_test_built_dataset(tfds_dir):
    ds = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir))
    assert ds.name == "tfds:routecal_test_gray" and ds.num_classes == 3
    assert (len(ds.train), len(ds.calib), len(ds.test)) == (30, 10, 15)
    assert ds.seq_len == 9 and ds.token_dim == 16
    assert ds.train.tokens.min() >= 0 and ds.train.tokens.max() <= 1
    # The tokens are exactly the generated images / 255, cut into patches: identify rows by the
    # index written in pixel (0, 0) and compare with the generator's arrays.
    train_images, train_labels = _test_images("train", 40, (12, 12, 1))
    seen = []
    for s in (ds.train, ds.calib):
        rows = _first_pixel(s.tokens)
        seen.extend(rows.tolist())
        expected = embedded.images_to_patches(
            train_images[rows, ..., 0].astype(np.float32) / 255, 4
        )
        np.testing.assert_allclose(s.tokens, expected, atol=1e-7)
        np.testing.assert_array_equal(s.labels, train_labels[rows])
    assert sorted(seen) == list(range(40))  # calib carved from train, disjoint, complete
    test_images, _ = _test_images("test", 15, (12, 12, 1))
    rows = _first_pixel(ds.test.tokens)
    assert sorted(rows.tolist()) == list(range(15))
    np.testing.assert_allclose(
        embedded.patches_to_images(ds.test.tokens, (12, 12), 4) * 255,
        test_images[rows, ..., 0],
        atol=1e-4,
    )
    # Seeded: same seed same calib rows, other seed other rows; max_examples caps each split.
    again = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir))
    np.testing.assert_array_equal(again.calib.tokens, ds.calib.tokens)
    other = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, seed=1))
    assert set(_first_pixel(other.calib.tokens)) != set(_first_pixel(ds.calib.tokens))
    capped = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, max_examples=7, patch_size=6))
    assert (len(capped.train), len(capped.calib), len(capped.test)) == (7, 7, 7)
    assert capped.seq_len == 4 and capped.token_dim == 36


def test_tfds_loader_colour_patches(tfds_dir):
    ds = load_dataset(tfds_cfg("routecal_test_colour", tfds_dir))
    assert ds.seq_len == 4 and ds.token_dim == 48  # 8x8x3, 4x4 patches: 4 tokens x (4*4*3)
    test_images, _ = _test_images("test", 15, (8, 8, 3))
    rows = np.rint(ds.test.tokens[:, 0, 0] * 255).astype(int)
    np.testing.assert_allclose(
        embedded.patches_to_images(ds.test.tokens, (8, 8, 3), 4) * 255, test_images[rows], atol=1e-4
    )


def test_tfds_loader_rejects_non_image_dataset(digits_dir):
    # routecal_digits stores [8, 8] tensors (no channel axis, 0..16 levels), not TFDS images.
    with pytest.raises(ValueError, match=r"fixed \[H, W, C\] shape"):
        load_dataset(tfds_cfg("routecal_digits", digits_dir, patch_size=2))


def test_tfds_missing_data_is_a_clear_error(tmp_path):
    empty = tmp_path / "no_data_here"
    for name in ("mnist", "cifar10", "routecal_never_built"):
        with pytest.raises(ValueError) as err:
            load_dataset(tfds_cfg(name, empty))
        msg = str(err.value)
        assert repr(name) in msg and str(empty) in msg and f"tfds build {name}" in msg, msg
    assert not (empty / "mnist").exists() or not any((empty / "mnist").rglob("*.array_record*"))


def test_tfds_bad_input(tfds_dir):
    with pytest.raises(ValueError, match="patch_size"):
        load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, patch_size=5))
    with pytest.raises(ValueError, match="calib_fraction"):
        load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, calib_fraction=1.5))
    with pytest.raises(ValueError, match="max_examples"):
        load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, max_examples=0))
    with pytest.raises(ValueError, match="tfds:<name>"):
        load_dataset(ml_collections.ConfigDict(dict(name="tfds:")))


def test_load_dataset_accepts_plain_dict_and_rejects_missing_name():
    ds = load_dataset(dict(name="synthetic", n_train=5, n_calib=5, n_test=5))
    assert len(ds.train) == 5
    with pytest.raises(ValueError, match="data.name"):
        load_dataset(dict(seed=0))


def test_tfds_decoded_cache(tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ROUTECAL_DATA_DIR", str(tmp_path / "cache"))
    fresh = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir))
    first = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, cache_decoded=True))
    files = sorted((tmp_path / "cache" / "decoded").rglob("*.npz"))
    assert [f.name for f in files] == ["test.npz", "train.npz"]
    # Poison the cache's pixels: a second load must come from the cache (and equal it), while
    # capped loads also use it; without the cache flag the files are ignored.
    for f in files:
        with np.load(f) as z:
            np.savez(f, images=255 - z["images"], labels=z["labels"])
    cached = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, cache_decoded=True))
    for name in ("train", "calib", "test"):
        np.testing.assert_array_equal(first.split(name).tokens, fresh.split(name).tokens)
        np.testing.assert_allclose(
            cached.split(name).tokens, 1 - fresh.split(name).tokens, atol=1e-6
        )
        np.testing.assert_array_equal(cached.split(name).labels, fresh.split(name).labels)
    capped = load_dataset(
        tfds_cfg("routecal_test_gray", tfds_dir, cache_decoded=True, max_examples=5)
    )
    capped_fresh = load_dataset(tfds_cfg("routecal_test_gray", tfds_dir, max_examples=5))
    np.testing.assert_allclose(capped.test.tokens, 1 - capped_fresh.test.tokens, atol=1e-6)
