"""Text data for causal LMs: packed token sequences per split and domain.

    ds = load_text_dataset({"name": "stdlib", "seq_len": 256})
    ds.train.ids      # [N, T + 1] token rows: inputs row[:-1], targets row[1:]
    ds.split("far")   # a shifted domain

Sources (`data.name`):
  "stdlib"        the embedded corpus (`stdlib.py`): splits train / calib / test (in-domain, by
                  file), near (Lib/test) and far (pydoc prose);
  "tfds:<name>"   a TFDS text dataset (lm1b, tiny_shakespeare, wiki40b, ...) prepared in the user's
                  data_dir (`sources.py`), same error as the image loader when absent;
  "text_dir"      every file under `data.path`, split by file; "jsonl": one document per line of
                  `data.path` (field `data.text_key`), split by line.
Tokenizer (`data.tokenizer`): "bytes" (256 + BOS/EOS/PAD) or a path to a `tokenizer.json`.
`data.max_bytes` caps every evaluation split (calib, test, near, far) and `data.max_train_bytes`
the training split, at the first documents up to that many text bytes. An evaluation split's
documents are its independent units (token records' `doc_id`), so a cap that keeps a few long
files leaves a test with a few clusters: `data.eval_doc_order="shuffle"` takes the evaluation
documents in a seeded random order (`data.seed` and the split's name) and `data.max_doc_bytes`
keeps at most that many leading bytes of each, so a 208 kB split holds >= 208000 / max_doc_bytes
documents when the corpus has them (the kept original indices: `manifest["eval_documents"]`).

Letters: N sequences, T tokens per sequence.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from routecal._checks import check_positive_int
from routecal.data.text import packing
from routecal.data.text.tokenizer import ByteTokenizer, HFTokenizer, load_tokenizer

DOMAIN_CODES = {"in": 0, "near": 1, "far": 2}
TEXT_DEFAULTS = dict(
    name="stdlib",
    seed=0,
    seq_len=256,
    tokenizer="bytes",
    calib_fraction=0.1,
    test_fraction=0.1,
    data_dir=None,
    path=None,
    text_key="text",
    max_bytes=None,
    max_train_bytes=None,
    max_docs=None,
    max_doc_bytes=None,
    eval_doc_order="first",
)
EVAL_DOC_ORDERS = ("first", "shuffle")
__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "TextDataset",
    "TextSplit",
    "load_text_dataset",
    "load_tokenizer",
]


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Packed sequences of one split.

    Attributes:
      ids: [N, T + 1] token rows (uint16 or int32).
      domain: "in", "near" or "far" (`DOMAIN_CODES` gives the integer code).
      n_bytes: text bytes the split holds (for bits per byte).
      n_targets: non-PAD target tokens.
      doc: [N, T + 1] int32 document index of each token in this split's document list (after
        `max_bytes`), -1 on PAD (`packing.document_ids`); None for rows built without documents.
    """

    ids: np.ndarray
    domain: str
    n_bytes: int
    n_targets: int
    doc: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / max(self.n_targets, 1)


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """Named splits of packed sequences, the tokenizer and the corpus manifest."""

    name: str
    tokenizer: Any
    seq_len: int
    splits: dict[str, TextSplit]
    manifest: dict

    @property
    def train(self) -> TextSplit:
        return self.splits["train"]

    @property
    def calib(self) -> TextSplit:
        return self.splits["calib"]

    @property
    def test(self) -> TextSplit:
        return self.splits["test"]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def split(self, name: str) -> TextSplit:
        if name not in self.splits:
            raise ValueError(f"split: unknown split {name!r}; expected one of {list(self.splits)}")
        return self.splits[name]


def select_documents(
    n_bytes: list[int],
    max_bytes: int | None,
    max_doc_bytes: int | None = None,
    order: str = "first",
    seed: int = 0,
    label: str = "",
) -> list[tuple[int, int]]:
    """Which documents an evaluation split keeps, and how many leading bytes of each.

    Args:
      n_bytes: [D] text bytes of each document, in corpus order.
      max_bytes: total text bytes kept (None: all); the last kept document is cut to fit.
      max_doc_bytes: leading bytes kept per document (None: whole documents).
      order: "first" (corpus order) or "shuffle" (a permutation seeded by `seed` and `label`).
      seed, label: the permutation's seed (`data.seed`) and the split's name.

    Returns:
      [(document index, bytes kept)] in the split's order; documents of 0 bytes are skipped.
    """
    if order not in EVAL_DOC_ORDERS:
        raise ValueError(f"data.eval_doc_order: expected one of {EVAL_DOC_ORDERS}, got {order!r}")
    idx = np.arange(len(n_bytes))
    if order == "shuffle":
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        idx = rng.permutation(len(n_bytes))
    kept, total = [], 0
    for i in idx:
        if max_bytes is not None and total >= max_bytes:
            break
        n = int(n_bytes[i])
        if max_doc_bytes is not None:
            n = min(n, max_doc_bytes)
        if max_bytes is not None:
            n = min(n, max_bytes - total)
        if n > 0:
            kept.append((int(i), n))
            total += n
    return kept


def make_split(
    docs: list[bytes],
    domain: str,
    tok: Any,
    seq_len: int,
    max_bytes: int | None,
    label: str,
    max_doc_bytes: int | None = None,
    order: str = "first",
    seed: int = 0,
) -> TextSplit:
    """Tokenises and packs `docs`, those `select_documents` keeps (all when no cap is set)."""
    if max_bytes is not None or max_doc_bytes is not None or order != "first":
        docs = [docs[i][:n] for i, n in select_documents(
            [len(d) for d in docs], max_bytes, max_doc_bytes, order, seed, label)]
    if not docs or not any(len(d) for d in docs):
        raise ValueError(f"data: split {label!r} of the corpus is empty (no text)")
    encoded = [tok.encode(d) for d in docs]
    ids = packing.pack_documents(
        encoded,
        seq_len,
        bos=tok.bos,
        eos=tok.eos,
        pad=tok.pad,
        vocab_size=tok.vocab_size,
    )
    n_targets = int(np.sum(ids[:, 1:] != tok.pad))
    doc = packing.document_ids([len(e) for e in encoded], seq_len)
    return TextSplit(ids, domain, int(sum(len(d) for d in docs)), n_targets, doc)


def load_text_dataset(data_cfg: Any) -> TextDataset:
    """Builds the text dataset named by `data_cfg.name` (keys and defaults in `TEXT_DEFAULTS`).

    Raises:
      ValueError: unknown dataset, empty corpus, missing tokenizer.json, bad values (naming them).
    """
    keys = data_cfg.keys() if hasattr(data_cfg, "keys") else ()
    unknown = sorted(set(keys) - set(TEXT_DEFAULTS))
    if unknown:
        raise ValueError(f"data: unknown key(s) {unknown}; valid: {sorted(TEXT_DEFAULTS)}")
    get = lambda k: _get(data_cfg, k)
    name = get("name")
    if not isinstance(name, str):
        raise ValueError(f"data.name: expected a string, got {name!r}")
    seq_len = check_positive_int(get("seq_len"), "data.seq_len")
    seed = check_positive_int(get("seed"), "data.seed", minimum=0)
    caps = {}
    for key in ("max_bytes", "max_train_bytes", "max_doc_bytes"):
        caps[key] = get(key) if get(key) is None else check_positive_int(get(key), f"data.{key}")
    tok = load_tokenizer(get("tokenizer"))
    fracs = float(get("calib_fraction")), float(get("test_fraction"))
    if name == "stdlib":
        from routecal.data.text import stdlib

        texts = {
            s: [
                b
                for _, b in stdlib.corpus_texts(
                    "in",
                    s,
                    seed=seed,
                    calib_fraction=fracs[0],
                    test_fraction=fracs[1],
                    data_dir=get("data_dir"),
                )
            ]
            for s in stdlib.IN_SPLITS
        }
        for d in ("near", "far"):
            texts[d] = [b for _, b in stdlib.corpus_texts(d, data_dir=get("data_dir"))]
        manifest = stdlib.manifest(seed, *fracs, data_dir=get("data_dir"))
    else:
        from routecal.data.text import sources

        texts, manifest = sources.load_documents(name, get, seed, fracs)
    order = get("eval_doc_order")
    eval_args = dict(max_doc_bytes=caps["max_doc_bytes"], order=order, seed=seed)
    splits = {
        s: make_split(
            docs,
            "in" if s in ("train", "calib", "test") else s,
            tok,
            seq_len,
            caps["max_train_bytes" if s == "train" else "max_bytes"],
            s,
            **({} if s == "train" else eval_args),
        )
        for s, docs in texts.items()
    }
    if order != "first" or caps["max_doc_bytes"] is not None:
        manifest = {**manifest, "eval_documents": {
            s: [i for i, _ in select_documents([len(d) for d in docs], caps["max_bytes"],
                                               caps["max_doc_bytes"], order, seed, s)]
            for s, docs in texts.items() if s != "train"}}
    manifest = {**manifest, "tokenizer": tok.name, "seq_len": seq_len}
    return TextDataset(name, tok, seq_len, splits, manifest)


def _get(data_cfg: Any, key: str) -> Any:
    value = data_cfg.get(key, TEXT_DEFAULTS[key])
    return TEXT_DEFAULTS[key] if value is None else value
