"""TFDS image-classification datasets (mnist, fashion_mnist, cifar10, ...) as patch tokens.

Reads a dataset that the user has already prepared in array_record format under `data_cfg.data_dir`,
with `tfds` random-access data sources (no TensorFlow needed, nothing is ever downloaded). On a
machine with internet access, prepare it once with

    pip install tensorflow tensorflow-datasets   # TensorFlow is needed to *build*, not to read
    tfds build mnist --data_dir /path/to/tfds --file_format array_record

(the same for fashion_mnist, cifar10) and copy the directory over if needed. Data prepared in the
default tfrecord format cannot be read without TensorFlow; the loader says so. Any TFDS dataset with an
`image` feature ([H, W, C] uint8) and a `label` ClassLabel and "train" / "test" splits works, so
the three listed names are examples rather than a whitelist.

Decoding PNG images runs at roughly 2,000 examples/s on one CPU core, so by default the first full
load caches the decoded uint8 arrays (see `decoded_cache_dir`) and later loads take a second.

Splits: "test" is the TFDS test split; "calib" is a seeded random `calib_fraction` of the TFDS train
split, and "train" is the rest. `max_examples` caps each split (a seeded random subset). Images are
scaled to [0, 1] (pixel / 255) and cut into `patch_size x patch_size` patches: mnist with the
default patch 4 gives T = 49 tokens of P = 16 features; cifar10 gives T = 64 tokens of P = 48
(features ordered row, column, channel inside the patch).

Letters: N examples, H, W image height and width, C channels, T tokens, P features per token.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from routecal._checks import check_positive_int
from routecal.data.embedded import _check_patch, images_to_patches, quiet_tfds, resolve_data_dir
from routecal.data.splits import Dataset, Split

# Defaults used when a key is missing from the data config (data_dir None: $TFDS_DATA_DIR or
# ~/tensorflow_datasets, as in TFDS itself; max_examples None: no cap).
TFDS_DEFAULTS = dict(
    seed=0, patch_size=4, data_dir=None, calib_fraction=0.1, max_examples=None, cache_decoded=True
)
EXAMPLES = ("mnist", "fashion_mnist", "cifar10")
_READ_CHUNK = 4096


def _how_to_prepare(name: str, data_dir: str) -> str:
    return (
        f"prepare it on a machine with internet access with "
        f"`pip install tensorflow tensorflow-datasets && tfds build {name} --data_dir {data_dir} "
        f"--file_format array_record` (then copy {data_dir} here), or set data.data_dir to the "
        f"directory that holds {name}/<version>/"
    )


def resolve_tfds_data_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (user-expanded)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return os.fspath(pathlib.Path(data_dir).expanduser())


def open_builder(name: str, data_dir: str | os.PathLike | None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder for `name` in `data_dir`, checked to be readable without TF.

    Raises:
      ValueError: naming the dataset and the data_dir, with how to prepare it, when the data is
        absent, or when it was prepared in a format other than array_record / parquet.
    """
    root = resolve_tfds_data_dir(data_dir)
    with quiet_tfds():
        try:
            builder = tfds.builder(name, data_dir=root)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(
                f"data.name: TFDS dataset {name!r} not found in data_dir {root!r} (and not a known "
                f"TFDS builder); {_how_to_prepare(name, root)}"
            ) from e
        prepared = builder.is_prepared()
    if not prepared:
        raise ValueError(
            f"data.data_dir: TFDS dataset {name!r} (version {builder.version}) is not prepared in "
            f"data_dir {root!r} (looked for {builder.data_dir}); routecal never downloads; "
            f"{_how_to_prepare(name, root)}"
        )
    fmt = builder.info.file_format
    readable = (tfds.core.FileFormat.ARRAY_RECORD, tfds.core.FileFormat.PARQUET)
    if fmt not in readable:
        raise ValueError(
            f"data.data_dir: TFDS dataset {name!r} in data_dir {root!r} is stored as "
            f"{getattr(fmt, 'value', fmt)}, which needs TensorFlow to read; rebuild it with "
            f"`tfds build {name} --data_dir {root} --file_format array_record`"
        )
    return builder


def decoded_cache_dir(builder: tfds.core.DatasetBuilder) -> pathlib.Path:
    """Where decoded splits of `builder`'s prepared data are cached.

    `<routecal cache>/decoded/<name>/<version>/<key>/`, with the routecal cache dir as in
    `embedded.resolve_data_dir(None)` and `key` a hash of the prepared files' location and the
    modification time of their dataset_info.json (a rebuilt dataset gets a new key).
    """
    data_path = pathlib.Path(os.fspath(builder.data_dir)).resolve()
    info = data_path / "dataset_info.json"
    stamp = f"{data_path}|{info.stat().st_mtime_ns if info.exists() else 0}"
    key = hashlib.sha1(stamp.encode()).hexdigest()[:16]
    return resolve_data_dir(None) / "decoded" / builder.name / str(builder.version) / key


class _SplitReader:
    """Reads examples of one TFDS split, from the decoded cache (`cache_file`) when present.

    `read(idx, cache_all=True)` decodes the whole split once, writes it to `cache_file` (atomically)
    and serves every later read from memory; with `cache_all=False` and no cache, only `idx` is
    decoded.
    """

    def __init__(self, source, cache_file: pathlib.Path | None):
        self.source = source
        self.cache_file = cache_file
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None
        if cache_file is not None and cache_file.exists():
            with np.load(cache_file) as z:
                images, labels = z["images"], z["labels"]
            if len(labels) == len(source):
                self.arrays = (images, labels)

    def read(self, idx: np.ndarray, *, cache_all: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.arrays is None and cache_all and self.cache_file is not None:
            self.arrays = _read(self.source, np.arange(len(self.source)))
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, images=self.arrays[0], labels=self.arrays[1])
            os.replace(tmp, self.cache_file)
        if self.arrays is not None:
            return self.arrays[0][idx], self.arrays[1][idx]
        return _read(self.source, idx)


def _read(source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reads examples `indices` (sorted) -> images [N, H, W, C], labels [N] int32."""
    images, labels = [], []
    for start in range(0, len(indices), _READ_CHUNK):
        chunk = [int(i) for i in indices[start : start + _READ_CHUNK]]
        for ex in source.__getitems__(chunk):
            images.append(ex["image"])
            labels.append(ex["label"])
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def _to_tokens(images_NxHxWxC: np.ndarray, patch: int) -> np.ndarray:
    """uint8 images -> [N, T, P] float32 in [0, 1]; one-channel images give P = patch^2."""
    if images_NxHxWxC.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 pixels, got dtype {images_NxHxWxC.dtype}")
    x = images_NxHxWxC.astype(np.float32) / 255.0
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    return images_to_patches(x, patch)


def load_tfds(data_cfg) -> Dataset:
    """Loads "tfds:<name>" from `data_cfg.data_dir` as patch tokens (see the module docstring).

    Args:
      data_cfg: ConfigDict (or dict) with `name` = "tfds:<name>" and (missing keys take these
        defaults) seed (0), patch_size (4), data_dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets),
        calib_fraction (0.1, of the TFDS train split), max_examples (None: no cap per split),
        cache_decoded (True: the first full load decodes each split once and caches the uint8
        arrays under the routecal cache dir, see `decoded_cache_dir`; later loads, full or capped,
        read the cache; capped loads without a cache decode only the examples they need).

    Returns:
      Dataset "tfds:<name>": tokens [N, (H/p)(W/p), p*p*C'] float32 in [0, 1] (C' = 1 for
      grayscale, else C), labels [N] int32, num_classes from the `label` feature.

    Raises:
      ValueError: unknown or absent dataset (message names the dataset, the data_dir and how to
        prepare it), bad patch size, fractions or caps.
    """
    full_name = data_cfg.get("name", "")
    name = full_name.removeprefix("tfds:")
    if not name:
        raise ValueError(f"data.name: expected 'tfds:<name>' (e.g. tfds:mnist), got {full_name!r}")

    def get(key):
        value = data_cfg.get(key, TFDS_DEFAULTS[key])
        return TFDS_DEFAULTS[key] if value is None else value

    seed = check_positive_int(get("seed"), "seed", minimum=0)
    calib_fraction = float(get("calib_fraction"))
    if not 0.0 < calib_fraction < 1.0:
        raise ValueError(f"calib_fraction: must lie in (0, 1), got {calib_fraction!r}")
    max_examples = get("max_examples")
    if max_examples is not None:
        max_examples = check_positive_int(max_examples, "max_examples")
    patch = check_positive_int(get("patch_size"), "patch_size")

    builder = open_builder(name, data_cfg.get("data_dir", None))
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"data.name: TFDS dataset {name!r} needs 'image' and 'label' features; "
            f"has {sorted(features.keys())}"
        )
    image_shape = tuple(features["image"].shape)
    if len(image_shape) != 3 or None in image_shape:
        raise ValueError(
            f"data.name: {name!r} images must have a fixed [H, W, C] shape, got {image_shape}"
        )
    _check_patch(patch, image_shape[:2])
    num_classes = int(features["label"].num_classes)
    splits = set(builder.info.splits.keys())
    if not {"train", "test"} <= splits:
        raise ValueError(
            f"data.name: {name!r} needs 'train' and 'test' splits, has {sorted(splits)}"
        )

    with quiet_tfds():
        sources = builder.as_data_source(split=["train", "test"])
    train_src, test_src = sources
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(train_src))
    n_calib = max(1, round(calib_fraction * len(train_src)))
    calib_idx, train_idx = perm[:n_calib], perm[n_calib:]
    test_idx = rng.permutation(len(test_src))
    if max_examples is not None:
        train_idx, calib_idx, test_idx = (
            i[:max_examples] for i in (train_idx, calib_idx, test_idx)
        )
    if len(train_idx) == 0:
        raise ValueError(f"calib_fraction: {calib_fraction} leaves no training example of {name!r}")

    cache = decoded_cache_dir(builder) if get("cache_decoded") else None
    readers = {
        k: _SplitReader(src, cache / f"{k}.npz" if cache else None)
        for k, src in (("train", train_src), ("test", test_src))
    }

    def split(reader, idx) -> Split:
        images, labels = reader.read(np.sort(idx), cache_all=max_examples is None)
        return Split(_to_tokens(images, patch), labels)

    return Dataset(
        full_name,
        split(readers["train"], train_idx),
        split(readers["train"], calib_idx),
        split(readers["test"], test_idx),
        num_classes=num_classes,
    )
