"""The embedded text corpus: the running interpreter's standard library, as bytes, no download.

Domains (`DOMAINS`):
  "in"   non-test `.py` modules (everything under the stdlib root except site-packages, the `test`
         package and any `tests` / `idle_test` directory or `test_*.py` file), split train / calib /
         test **by file** with a seeded permutation of the sorted relative paths;
  "near" `.py` files of `Lib/test` (a near-domain shift: the same language, test code);
  "far"  English prose: every topic of `pydoc_data.topics` (one document each) and the `.txt` /
         `.rst` files the stdlib ships outside site-packages and `test`.

`corpus_files(seed)` enumerates and splits; `corpus_texts(domain, split, seed)` gives the bytes;
`manifest(...)` lists every file with its sha256, domain and split, and the Python version (a
training run writes it to its workdir). The bytes are read through a TFDS dataset
(`StdlibTextBuilder`, array_record, built once per interpreter and corpus digest under the routecal
data dir) with `tfds.data_source`, as the image data is.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import sys
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from routecal.data.embedded import build_once, quiet_tfds, resolve_data_dir

DOMAINS = ("in", "near", "far")
IN_SPLITS = ("train", "calib", "test")
STDLIB_NAME = "routecal_stdlib_text"
_TEST_DIRS = {"test", "tests", "idle_test"}
_SKIP_DIRS = {"site-packages", "__pycache__", "dist-packages"}


@dataclasses.dataclass(frozen=True)
class CorpusFile:
    """One document: `path` relative to the stdlib root ("pydoc_data.topics/<topic>" for pydoc
    topics), its domain, split ("train"/"calib"/"test" for "in", else the domain name)."""

    path: str
    domain: str
    split: str


def stdlib_root() -> pathlib.Path:
    """The running interpreter's standard-library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"]).resolve()


def _walk(root: pathlib.Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        rel = pathlib.Path(dirpath).relative_to(root)
        out += [(rel / f).as_posix() for f in filenames]
    return sorted(out)


def _domain_of(rel: str) -> str | None:
    parts = rel.split("/")
    if rel.endswith(".py"):
        if parts[0] == "test":
            return "near"
        if _TEST_DIRS & set(parts[:-1]) or parts[-1].startswith("test_"):
            return None  # other packages' tests: in no domain
        return "in"
    if rel.endswith((".txt", ".rst")) and not _TEST_DIRS & set(parts[:-1]):
        return "far"
    return None


def _pydoc_topics() -> dict[str, str]:
    from pydoc_data import topics

    return dict(topics.topics)


@functools.lru_cache(maxsize=1)
def _enumerate() -> tuple[tuple[str, str], ...]:
    """(path, domain) of every document, sorted by path within domain."""
    root = stdlib_root()
    docs = [(rel, d) for rel in _walk(root) if (d := _domain_of(rel)) is not None]
    docs += [(f"pydoc_data.topics/{k}", "far") for k in sorted(_pydoc_topics())]
    return tuple(sorted(docs, key=lambda x: (DOMAINS.index(x[1]), x[0])))


def split_by_file(
    paths: list[str], seed: int, calib_fraction: float, test_fraction: float
) -> dict[str, list[str]]:
    """Seeded train / calib / test partition of `paths` (sorted first, so the result does not
    depend on listing order or process): a permutation from `np.random.default_rng(seed)`, the
    first round(test_fraction * n) files to test, the next round(calib_fraction * n) to calib."""
    for name, f in (("calib_fraction", calib_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < f < 1.0:
            raise ValueError(f"data.{name}: must lie in (0, 1), got {f!r}")
    if calib_fraction + test_fraction >= 1.0:
        raise ValueError("data.calib_fraction + data.test_fraction: must be < 1")
    paths = sorted(paths)
    n = len(paths)
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_calib = round(test_fraction * n), round(calib_fraction * n)
    take = lambda idx: sorted(paths[i] for i in idx)
    return {
        "test": take(perm[:n_test]),
        "calib": take(perm[n_test : n_test + n_calib]),
        "train": take(perm[n_test + n_calib :]),
    }


def corpus_files(
    seed: int = 0, calib_fraction: float = 0.1, test_fraction: float = 0.1
) -> list[CorpusFile]:
    """Every document of the corpus with its domain and split (in-domain split by file)."""
    docs = _enumerate()
    in_paths = [p for p, d in docs if d == "in"]
    parts = split_by_file(in_paths, seed, calib_fraction, test_fraction)
    split_of = {p: s for s, ps in parts.items() for p in ps}
    return [CorpusFile(p, d, split_of.get(p, d)) for p, d in docs]


def _read_raw(path: str) -> bytes:
    if path.startswith("pydoc_data.topics/"):
        return _pydoc_topics()[path.split("/", 1)[1]].encode("utf-8")
    return (stdlib_root() / path).read_bytes()


@functools.lru_cache(maxsize=1)
def corpus_digest() -> str:
    """sha256 over (path, sha256 of content) of every document: names one corpus exactly."""
    h = hashlib.sha256()
    for p, _ in _enumerate():
        h.update(p.encode() + b"\0" + hashlib.sha256(_read_raw(p)).digest())
    return h.hexdigest()


class StdlibTextBuilder(tfds.core.GeneratorBasedBuilder):
    """The corpus as a TFDS dataset: splits "in", "near", "far", one example per document with
    `path` (text), `content` (uint8 bytes) and `sha256` (text)."""

    name = STDLIB_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "stdlib .py modules, Lib/test files and stdlib prose, per file."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The running Python interpreter's standard library, one file per example.",
            features=tfds.features.FeaturesDict(
                {
                    "path": tfds.features.Text(),
                    "sha256": tfds.features.Text(),
                    "content": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data is the interpreter's own library
        return {d: self._generate_examples(d) for d in DOMAINS}

    def _generate_examples(self, domain: str):
        for path, d in _enumerate():
            if d == domain:
                raw = _read_raw(path)
                yield (
                    path,
                    {
                        "path": path,
                        "sha256": hashlib.sha256(raw).hexdigest(),
                        "content": np.frombuffer(raw, np.uint8),
                    },
                )


def _build_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
    ver = "".join(map(str, sys.version_info[:3]))
    return resolve_data_dir(data_dir) / "stdlib_text" / f"py{ver}-{corpus_digest()[:12]}"


@functools.lru_cache(maxsize=2)
def _read_all(root: str) -> dict[str, tuple[bytes, str]]:
    """path -> (content, sha256) for every document, read through `tfds.data_source`."""
    builder = build_once(StdlibTextBuilder, pathlib.Path(root))
    with quiet_tfds():
        out = {}
        for domain in DOMAINS:
            src = builder.as_data_source(split=domain)
            for ex in src.__getitems__(list(range(len(src)))):
                p = ex["path"].decode() if isinstance(ex["path"], bytes) else ex["path"]
                sha = ex["sha256"].decode() if isinstance(ex["sha256"], bytes) else ex["sha256"]
                out[p] = (np.asarray(ex["content"], np.uint8).tobytes(), sha)
    return out


def corpus_texts(
    domain: str,
    split: str | None = None,
    *,
    seed: int = 0,
    calib_fraction: float = 0.1,
    test_fraction: float = 0.1,
    data_dir: str | os.PathLike | None = None,
) -> list[tuple[str, bytes]]:
    """(path, bytes) of every document of `domain` ("in", "near", "far") and, for "in", `split`
    ("train", "calib", "test"; None = all three), sorted by path.

    Raises:
      ValueError: unknown domain or split.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain: unknown {domain!r}; expected one of {DOMAINS}")
    if domain == "in" and split is not None and split not in IN_SPLITS:
        raise ValueError(f"split: unknown {split!r}; expected one of {IN_SPLITS} or None")
    if domain != "in" and split not in (None, domain):
        raise ValueError(f"split: domain {domain!r} has no split {split!r} (only 'in' is split)")
    files = corpus_files(seed, calib_fraction, test_fraction)
    data = _read_all(os.fspath(_build_dir(data_dir)))
    want = [f.path for f in files if f.domain == domain and (split is None or f.split == split)]
    return [(p, data[p][0]) for p in want]


def manifest(
    seed: int = 0,
    calib_fraction: float = 0.1,
    test_fraction: float = 0.1,
    data_dir: str | os.PathLike | None = None,
) -> dict:
    """The corpus manifest: Python version, stdlib root, digest, and per file its path, domain,
    split, byte count and sha256."""
    data = _read_all(os.fspath(_build_dir(data_dir)))
    files = [
        {
            "path": f.path,
            "domain": f.domain,
            "split": f.split,
            "n_bytes": len(data[f.path][0]),
            "sha256": data[f.path][1],
        }
        for f in corpus_files(seed, calib_fraction, test_fraction)
    ]
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib_root": str(stdlib_root()),
        "corpus_digest": corpus_digest(),
        "seed": seed,
        "calib_fraction": calib_fraction,
        "test_fraction": test_fraction,
        "files": files,
    }
