"""User text sources: TFDS text datasets from a data_dir, a local folder, a JSONL file.

Each returns documents (bytes) for the splits train / calib / test (all in-domain) and a manifest.

* "tfds:<name>" (lm1b, tiny_shakespeare, wiki40b/en, ...): read with `tfds.data_source` from a
  dataset the user prepared in array_record format (`data.tfds.open_builder`: same error and
  preparation hint as the image loader when absent; nothing is downloaded). The text is the
  `text` feature (or `data.text_key`). Splits: TFDS "test" -> test; "validation" -> calib when it
  exists, else a seeded `calib_fraction` of the train documents. Documents are the examples
  (tiny_shakespeare has one per split, lm1b one sentence each); `data.max_docs` caps each split.
* "text_dir": every regular non-hidden file under `data.path` (sorted), split by file.
* "jsonl": one JSON object per line of `data.path` with the text under `data.text_key`, split by
  line.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from routecal._checks import check_positive_int
from routecal.data.text.stdlib import split_by_file


def _as_bytes(x: Any) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        return _as_bytes(x.item())
    raise ValueError(f"text: expected str or bytes, got {type(x).__name__}")


def _split_named(
    names: list[str], docs: dict[str, bytes], seed: int, fracs: tuple[float, float]
) -> dict[str, list[bytes]]:
    parts = split_by_file(names, seed, *fracs)
    return {s: [docs[n] for n in parts[s]] for s in ("train", "calib", "test")}


def _manifest(kind: str, where: str, docs: dict[str, bytes], seed: int) -> dict:
    return {
        "source": kind,
        "location": where,
        "seed": seed,
        "n_documents": len(docs),
        "sha256": hashlib.sha256(
            b"".join(hashlib.sha256(d).digest() for d in docs.values())
        ).hexdigest(),
    }


def _from_dir(path: pathlib.Path, seed: int, fracs) -> tuple[dict, dict]:
    if not path.is_dir():
        raise ValueError(f"data.path: no such directory {str(path)!r}")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    docs = {p.relative_to(path).as_posix(): p.read_bytes() for p in files}
    if len(docs) < 3:
        raise ValueError(
            f"data.path: {str(path)!r} holds {len(docs)} file(s); need >= 3 to split by file"
        )
    return _split_named(sorted(docs), docs, seed, fracs), _manifest(
        "text_dir", str(path), docs, seed
    )


def _from_jsonl(path: pathlib.Path, key: str, seed: int, fracs) -> tuple[dict, dict]:
    if not path.is_file():
        raise ValueError(f"data.path: no such JSONL file {str(path)!r}")
    docs = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"data.path: line {i + 1} of {path.name} is not JSON ({e})") from e
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"data.text_key: line {i + 1} of {path.name} has no {key!r} field")
        docs[f"{i:09d}"] = _as_bytes(obj[key])
    if len(docs) < 3:
        raise ValueError(f"data.path: {path.name} holds {len(docs)} document(s); need >= 3")
    return _split_named(sorted(docs), docs, seed, fracs), _manifest("jsonl", str(path), docs, seed)


def _from_tfds(name: str, get: Callable[[str], Any], seed: int, fracs) -> tuple[dict, dict]:
    from routecal.data.embedded import quiet_tfds
    from routecal.data.tfds import open_builder

    builder = open_builder(name, get("data_dir"))
    key = get("text_key")
    if key not in builder.info.features:
        raise ValueError(
            f"data.text_key: TFDS dataset {name!r} has no {key!r} feature; has "
            f"{sorted(builder.info.features.keys())}"
        )
    splits = set(builder.info.splits.keys())
    if not {"train", "test"} <= splits:
        raise ValueError(
            f"data.name: {name!r} needs 'train' and 'test' splits, has {sorted(splits)}"
        )
    cap = get("max_docs")
    cap = None if cap is None else check_positive_int(cap, "data.max_docs")

    def read(split: str) -> list[bytes]:
        with quiet_tfds():
            src = builder.as_data_source(split=split)
        n = len(src) if cap is None else min(cap, len(src))
        return [_as_bytes(ex[key]) for ex in src.__getitems__(list(range(n)))]

    out = {"train": read("train"), "test": read("test")}
    if "validation" in splits:
        out["calib"] = read("validation")
    else:
        docs = dict(enumerate(out["train"]))
        if len(docs) < 2:
            raise ValueError(
                f"data.name: {name!r} has {len(docs)} train document(s) and no validation split; "
                "cannot carve a calib split"
            )
        perm = np.random.default_rng(seed).permutation(len(docs))
        n_cal = max(1, round(fracs[0] * len(docs)))
        out["calib"] = [docs[int(i)] for i in sorted(perm[:n_cal])]
        out["train"] = [docs[int(i)] for i in sorted(perm[n_cal:])]
    flat = {f"{s}/{i}": d for s, ds in out.items() for i, d in enumerate(ds)}
    return out, _manifest(f"tfds:{name}", str(builder.data_dir), flat, seed)


def load_documents(
    name: str, get: Callable[[str], Any], seed: int, fracs: tuple[float, float]
) -> tuple[dict[str, list[bytes]], dict]:
    """Documents per split ("train", "calib", "test") and a manifest for a user source.

    Raises:
      ValueError: unknown dataset name, missing path or TFDS data (naming them).
    """
    if name.startswith("tfds:") and name[5:]:
        return _from_tfds(name[5:], get, seed, fracs)
    if name in ("text_dir", "jsonl"):
        path = get("path")
        if not path:
            raise ValueError(f"data.path: required for data.name={name!r}")
        path = pathlib.Path(path).expanduser()
        if name == "text_dir":
            return _from_dir(path, seed, fracs)
        return _from_jsonl(path, get("text_key"), seed, fracs)
    raise ValueError(
        f"data.name: unknown text dataset {name!r}; expected stdlib, tfds:<name>, text_dir or jsonl"
    )
