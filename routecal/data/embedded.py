"""Default offline dataset: scikit-learn's bundled digits (8x8) as a locally built TFDS dataset.

The 1,797 images of `sklearn.datasets.load_digits` are written once, by a TFDS
`GeneratorBasedBuilder` (`DigitsBuilder`, registered as ``"routecal_digits"``), into array_record files
under a cache directory, and read back with `tfds.data_source` (random access, no TensorFlow needed).
Building takes well under a second and happens once per cache directory; later calls reuse the files
(and, inside one process, the decoded arrays). The cache directory is, in order of precedence,
`data_cfg.data_dir`, the environment variable ``ROUTECAL_DATA_DIR``, or ``~/.cache/routecal/tfds``.

Images are scaled to [0, 1] (pixel / 16) and cut into non-overlapping `patch x patch` patches:
with the default `patch_size=2`, each image is a sequence of T = 16 tokens of P = 4 features.
The train / calib / test splits (60 / 20 / 20 %, stratified by class) are fixed by `data_cfg.seed`.

Letters: N examples, H, W image height and width, C channels, T tokens, P features per token.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits as _sk_load_digits
from sklearn.model_selection import train_test_split

from routecal._checks import check_positive_int
from routecal.data.splits import Dataset, Split

DIGITS_NAME = "routecal_digits"
DEFAULT_DATA_DIR = "~/.cache/routecal/tfds"
DATA_DIR_ENV = "ROUTECAL_DATA_DIR"
# Defaults used when a key is missing from the data config.
DIGITS_DEFAULTS = dict(seed=0, patch_size=2, data_dir=None, calib_fraction=0.2, test_fraction=0.2)


# ------------------------------------------------------------------------------------------------
# Patch tokens
# ------------------------------------------------------------------------------------------------


def images_to_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """Cuts images into non-overlapping `patch x patch` patches, in row-major patch order.

    Args:
      images: [N, H, W] (one channel) or [N, H, W, C].
      patch: patch side; must divide H and W.

    Returns:
      [N, (H/p)*(W/p), p*p] for 3-D input, [N, (H/p)*(W/p), p*p*C] for 4-D input; inside a token
      the features are ordered (row in patch, column in patch[, channel]).
    """
    if images.ndim not in (3, 4):
        raise ValueError(f"images: expected [N, H, W] or [N, H, W, C], got shape {images.shape}")
    patch = _check_patch(patch, images.shape[1:3])
    n, h, w = images.shape[:3]
    c = images.shape[3] if images.ndim == 4 else 1
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, (h // patch) * (w // patch), patch * patch * c)
    return x


def patches_to_images(
    tokens_NxTxP: np.ndarray, image_shape: tuple[int, ...], patch: int
) -> np.ndarray:
    """Inverse of `images_to_patches`: [N, T, P] -> [N, *image_shape] ((H, W) or (H, W, C))."""
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape: expected (H, W) or (H, W, C), got {image_shape}")
    patch = _check_patch(patch, image_shape[:2])
    h, w = image_shape[:2]
    c = image_shape[2] if len(image_shape) == 3 else 1
    n = tokens_NxTxP.shape[0]
    expected = ((h // patch) * (w // patch), patch * patch * c)
    if tokens_NxTxP.shape[1:] != expected:
        raise ValueError(
            f"tokens: expected shape [N, {expected[0]}, {expected[1]}] for image_shape "
            f"{tuple(image_shape)} and patch {patch}, got {tokens_NxTxP.shape}"
        )
    x = tokens_NxTxP.reshape(n, h // patch, w // patch, patch, patch, c)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, c)
    return x.reshape(n, *image_shape)


def _check_patch(patch, hw: tuple[int, ...]) -> int:
    patch = check_positive_int(patch, "patch_size")
    h, w = hw
    if h % patch or w % patch:
        raise ValueError(f"patch_size: {patch} does not divide image shape {(h, w)}")
    return patch


# ------------------------------------------------------------------------------------------------
# The TFDS builder
# ------------------------------------------------------------------------------------------------


class DigitsBuilder(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's digits as a TFDS dataset: one "train" split of 1,797 examples.

    Features: `image` uint8 [8, 8] with values 0..16 (as in sklearn), `label` in 0..9, and `index`,
    the row in `sklearn.datasets.load_digits()` (TFDS shuffles on write; `index` restores the order).
    """

    name = DIGITS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "scikit-learn digits, 8x8 uint8 images with the sklearn row index."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's bundled UCI optical digits, 8x8 images, 16 grey levels.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        d = _sk_load_digits()
        for i, (image, label) in enumerate(zip(d.images, d.target, strict=True)):
            yield i, {"image": image.astype(np.uint8), "label": int(label), "index": i}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """`data_dir`, else $ROUTECAL_DATA_DIR, else ~/.cache/routecal/tfds (user-expanded)."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return pathlib.Path(data_dir).expanduser()


@contextlib.contextmanager
def _file_lock(path: pathlib.Path):
    """Exclusive inter-process lock (so parallel test workers do not build the same files twice)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def quiet_tfds():
    """Silences TFDS progress bars and absl INFO/WARNING logs (restored on exit)."""
    from absl import logging as absl_logging
    from tensorflow_datasets.core.utils import tqdm_utils

    verbosity = absl_logging.get_verbosity()
    bars = tqdm_utils._active  # noqa: SLF001 - TFDS keeps the switch private
    absl_logging.set_verbosity(absl_logging.ERROR)
    tqdm_utils.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        tqdm_utils.display_progress_bar(bars)


def build_once(
    builder_cls: type[tfds.core.DatasetBuilder], root: pathlib.Path
) -> tfds.core.DatasetBuilder:
    """`builder_cls`'s dataset (array_record) in `root`, written unless already there; the write
    holds the inter-process lock `root/<name>.lock`, so parallel workers write it once."""
    with quiet_tfds():
        builder = builder_cls(data_dir=os.fspath(root), file_format="array_record")
        if not builder.is_prepared():
            with _file_lock(root / f"{builder_cls.name}.lock"):
                builder = builder_cls(data_dir=os.fspath(root), file_format="array_record")
                if not builder.is_prepared():
                    builder.download_and_prepare()
    return builder


def build_digits(data_dir: str | os.PathLike | None = None) -> DigitsBuilder:
    """Writes the digits TFDS dataset (array_record) into `data_dir` unless already there."""
    return build_once(DigitsBuilder, resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=4)
def _read_digits_cached(root: str) -> tuple[np.ndarray, np.ndarray]:
    builder = build_digits(root)
    source = builder.as_data_source(split="train")
    examples = source.__getitems__(list(range(len(source))))
    index = np.array([ex["index"] for ex in examples], dtype=np.int64)
    order = np.argsort(index)
    images = np.stack([ex["image"] for ex in examples])[order]
    labels = np.array([ex["label"] for ex in examples], dtype=np.int32)[order]
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def read_digits(data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Builds (once) and reads the digits TFDS dataset, in sklearn's row order.

    Returns:
      images: [1797, 8, 8] uint8 with values 0..16 (read-only); labels: [1797] int32.
    """
    return _read_digits_cached(os.fspath(resolve_data_dir(data_dir)))


# ------------------------------------------------------------------------------------------------
# Splits and the loader
# ------------------------------------------------------------------------------------------------


def stratified_split_indices(
    labels_N: np.ndarray, seed: int, calib_fraction: float = 0.2, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified train / calib / test index arrays (each sorted ascending).

    The default 0.2 / 0.2 fractions give the 60 / 20 / 20 split.
    """
    for name, frac in (("calib_fraction", calib_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise ValueError(f"{name}: must lie in (0, 1), got {frac!r}")
    if calib_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"calib_fraction + test_fraction: must be < 1, got {calib_fraction + test_fraction}"
        )
    idx = np.arange(len(labels_N))
    rest_fraction = calib_fraction + test_fraction
    tr, rest = train_test_split(idx, test_size=rest_fraction, random_state=seed, stratify=labels_N)
    ca, te = train_test_split(
        rest,
        test_size=test_fraction / rest_fraction,
        random_state=seed,
        stratify=labels_N[rest],
    )
    return np.sort(tr), np.sort(ca), np.sort(te)


def load_digits(data_cfg) -> Dataset:
    """scikit-learn digits as patch tokens, with seeded stratified 60 / 20 / 20 splits.

    Args:
      data_cfg: a ConfigDict (or dict) with keys (missing keys take these defaults):
        seed (0): split seed; patch_size (2): patch side, must divide 8;
        data_dir (None): TFDS cache dir (None: $ROUTECAL_DATA_DIR or ~/.cache/routecal/tfds);
        calib_fraction (0.2), test_fraction (0.2).

    Returns:
      Dataset "digits" with tokens [N, (8/p)^2, p^2] float32 in [0, 1] and labels [N] int32
      (p = 2: 1077 / 360 / 360 examples of 16 tokens x 4 features), num_classes = 10.
    """
    get = lambda k: _get(data_cfg, k, DIGITS_DEFAULTS[k])
    seed = check_positive_int(get("seed"), "seed", minimum=0)
    patch = _check_patch(get("patch_size"), (8, 8))
    images, labels = read_digits(get("data_dir"))
    tokens = images_to_patches(images.astype(np.float32) / 16.0, patch)
    tr, ca, te = stratified_split_indices(
        labels, seed, float(get("calib_fraction")), float(get("test_fraction"))
    )
    mk = lambda i: Split(tokens[i], labels[i].copy())
    return Dataset("digits", mk(tr), mk(ca), mk(te), num_classes=10)


def _get(data_cfg, key: str, default):
    """`data_cfg.get(key, default)`, treating an explicit None as missing only for `default`=None."""
    value = data_cfg.get(key, default)
    return default if value is None else value
