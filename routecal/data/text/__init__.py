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
the training split, at the first documents up to that many text bytes.

Letters: N sequences, T tokens per sequence.
"""

from __future__ import annotations

import dataclasses
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
)
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


def make_split(
    docs: list[bytes], domain: str, tok: Any, seq_len: int, max_bytes: int | None, label: str
) -> TextSplit:
    """Tokenises and packs `docs` (the first ones up to `max_bytes` text bytes, if set)."""
    if max_bytes is not None:
        kept, total = [], 0
        for d in docs:
            if total >= max_bytes:
                break
            kept.append(d[: max_bytes - total])
            total += len(kept[-1])
        docs = kept
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
    for key in ("max_bytes", "max_train_bytes"):
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
    splits = {
        s: make_split(
            docs,
            "in" if s in ("train", "calib", "test") else s,
            tok,
            seq_len,
            caps["max_train_bytes" if s == "train" else "max_bytes"],
            s,
        )
        for s, docs in texts.items()
    }
    manifest = {**manifest, "tokenizer": tok.name, "seq_len": seq_len}
    return TextDataset(name, tok, seq_len, splits, manifest)


def _get(data_cfg: Any, key: str) -> Any:
    value = data_cfg.get(key, TEXT_DEFAULTS[key])
    return TEXT_DEFAULTS[key] if value is None else value
