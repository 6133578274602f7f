"""The published MCQA benchmark files: reading them line by line, and each format's answer convention.

    ds = load_mcqa_file("/data/obqa/test.jsonl", "openbookqa")      # nothing is downloaded
    ds = load_mcqa_file("/data/arc/test.jsonl", "arc", n_options=4)  # ARC mixes 3/4/5 options
    ds = load_split("arc/e.jsonl:arc,tfds:ai2_arc/ARC-Challenge:test", "near", n_options=4)
    batch = encode_right_padded(ds, tokenizer, max_len)  # an imported checkpoint's prompts

Formats (Li & Wicker, arXiv:2603.09453, Sec. 5, evaluate on OpenBookQA in-domain, ARC-E/C near and
MedMCQA far; SciQ as in the thesis), JSONL / JSON / parquet as the publishers ship them. The answer
convention of each is stated here and applied as stated, never guessed from the data:

  openbookqa, arc   {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} (AI2 JSONL)
                    or {"question_stem" | "question", "choices": {"text": [], "label": []},
                    "answerKey"} (the Hugging Face parquet). Answer = the position of `answerKey`
                    among the item's choice labels ("A".."E" or "1".."5"); a key that is not one
                    of them is an error.
  sciq              {"question", "correct_answer", "distractor1..3"}: the four options shuffled
                    by `seed`; the answer is where `correct_answer` lands.
  medmcqa           {"question", "opa".."opd", "cop"}: `cop` is 1-based (1..4) in the original
                    release's JSON / JSONL and 0-based (0..3) in the Hugging Face parquet
                    (`ANSWER_BASE`); `answer_base` overrides it for a file converted otherwise. A
                    `cop` outside the range is an error naming its line, so one stray 0 in a
                    1-based file can never shift every answer.

Every error is one `ValueError` naming the file and the 1-based line (JSONL), item (a JSON array)
or row (parquet). JSON text may start with a UTF-8 BOM and use Windows line endings; duplicate keys
in a record, non-UTF-8 bytes, a line that is not one JSON object, or a truncated line are errors.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from routecal.data import mcqa
from routecal.data.mcqa import MCQA, from_parsed
from routecal.files import workdir as workdir_io

FORMATS = ("openbookqa", "arc", "sciq", "medmcqa")
# MedMCQA's `cop` base by how the file was published (see the module docstring).
ANSWER_BASE = {".json": 1, ".jsonl": 1, ".parquet": 0}
Record = tuple[str, dict[str, Any]]  # (location such as "line 3", the record)


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=workdir_io.reject_duplicate_keys)


def _decode(p: pathlib.Path) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a BOM (Windows editors) is dropped
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"path: {p} line {line} is not UTF-8 text (byte "
                         f"{data[e.start]:#04x} at offset {e.start})") from e


def _objects(p: pathlib.Path, rows: list[Any], unit: str) -> list[Record]:
    out = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict):
            what = "a JSON array" if isinstance(r, list) else type(r).__name__
            hint = " (an array of items belongs in a .json file)" if unit == "line" else ""
            raise ValueError(f"path: {p} {unit} {i} is {what}, not one JSON object per item{hint}")
        out.append((f"{unit} {i}", r))
    return out


def _jsonl(p: pathlib.Path, text: str) -> list[Record]:
    rows, where = [], []
    for i, line in enumerate(text.splitlines(), start=1):  # \n, \r\n and \r
        if not line.strip():
            continue
        try:
            rows.append(_loads(line))
        except ValueError as e:  # JSONDecodeError or a duplicate key
            raise ValueError(f"path: {p} line {i} is not a valid JSON record (truncated or "
                             f"corrupt: {e})") from e
        where.append(i)
    return [(f"line {i}", r) for i, (_, r) in zip(where, _objects(p, rows, "line"), strict=True)]


def read_records(path: str | pathlib.Path) -> list[Record]:
    """(location, record) of every row of a .jsonl, .json (a list, {"data": [...]}, or one object
    per line under a .json name, MedMCQA's release) or .parquet file, in file order.

    Raises:
      ValueError: naming the file and line / item: missing, not UTF-8, not JSON, a record that is
        not an object, duplicate keys.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"path: MCQA file not found: {p} (nothing is downloaded; place it there)")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(p).to_pylist()
        except Exception as e:  # pyarrow's own error types
            raise ValueError(f"path: {p} is not a readable parquet file ({e})") from e
        return _objects(p, rows, "row")
    text = _decode(p)
    if p.suffix == ".json":
        try:
            obj = _loads(text)
        except ValueError as e:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            if len(lines) > 1 and lines[0].lstrip().startswith("{"):
                return _jsonl(p, text)  # one object per line under a .json name
            line = getattr(e, "lineno", None)
            raise ValueError(f"path: {p} {f'line {line} ' if line else ''}is not valid JSON "
                             f"(truncated or corrupt: {e})") from e
        if isinstance(obj, dict) and "data" in obj:
            obj = obj["data"]
        return _objects(p, obj if isinstance(obj, list) else [obj], "item")
    return _jsonl(p, text)


# ----------------------------------------------------------------------------------------------
# The formats: record -> (question, options, answer index)
# ----------------------------------------------------------------------------------------------


def _ai2(row: dict[str, Any]) -> tuple[str, list[str], int]:
    q = row.get("question")
    if isinstance(q, dict):  # AI2 JSONL
        stem, choices = q["stem"], q["choices"]
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:  # Hugging Face parquet
        stem = row["question_stem"] if "question_stem" in row else row["question"]
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
    labels = [str(x) for x in labels]
    key = str(row["answerKey"])
    if key not in labels:
        raise ValueError(f"answerKey {key!r} is not one of the item's labels {labels}")
    return stem, texts, labels.index(key)


def _sciq(row: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str], int]:
    opts = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    perm = rng.permutation(4)
    return row["question"], [opts[j] for j in perm], int(np.argmax(perm == 0))


def _medmcqa(row: dict[str, Any], base: int) -> tuple[str, list[str], int]:
    cop = row["cop"]
    if isinstance(cop, bool) or not isinstance(cop, int | np.integer):
        raise ValueError(f"cop = {cop!r} is not an integer")
    if not base <= cop <= base + 3:
        raise ValueError(f"cop = {cop} is outside {base}..{base + 3} (this file's convention is "
                         f"{base}-based; pass answer_base={1 - base} if it was converted)")
    return row["question"], [row[k] for k in ("opa", "opb", "opc", "opd")], int(cop) - base


def load_mcqa_file(
    path: str | pathlib.Path,
    fmt: str,
    *,
    n_options: int | None = None,
    pad: bool = False,
    seed: int = 0,
    answer_base: int | None = None,
    domain: str = "in",
) -> MCQA:
    """Loads one published benchmark file (`FORMATS`; see the module docstring).

    Args:
      path: a .jsonl, .json or .parquet file (ValueError naming it if missing).
      fmt: "openbookqa", "arc", "sciq" or "medmcqa".
      n_options: keep only items with this many options (`MCQA.n_dropped` counts the rest).
        None: items with different counts are an error, unless `pad`.
      pad: pad items with fewer options with masked placeholders (`mcqa.from_parsed`).
      seed: SciQ option shuffle.
      answer_base: MedMCQA's `cop` base, 0 or 1 (None: `ANSWER_BASE` of the file's suffix).
      domain: label for tables ("in", "near", "far").
    Raises:
      ValueError: one line naming the file and the 1-based line / item of the record at fault.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: unknown MCQA format {fmt!r}; expected one of {FORMATS}")
    if answer_base not in (None, 0, 1) or isinstance(answer_base, bool):
        raise ValueError(f"answer_base: must be 0, 1 or None, got {answer_base!r}")
    p = pathlib.Path(path)
    records = read_records(p)
    if not records:
        raise ValueError(f"path: {p} holds no records")
    rng = np.random.default_rng(seed)
    parse: Callable[[dict[str, Any]], tuple[str, list[str], int]]
    if fmt in ("openbookqa", "arc"):
        parse = _ai2
    elif fmt == "sciq":
        parse = lambda r: _sciq(r, rng)  # noqa: E731
    else:
        base = ANSWER_BASE.get(p.suffix, 1) if answer_base is None else answer_base
        parse = lambda r: _medmcqa(r, base)  # noqa: E731
    parsed = []
    for loc, r in records:
        try:
            q, o, a = parse(r)
        except KeyError as e:
            raise ValueError(f"path: {p} {loc}: no {e} field (a {fmt} record has "
                             f"{_fields(fmt)}; this one has {sorted(r)})") from e
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"path: {p} {loc}: not a {fmt} record ({e})") from e
        parsed.append((q, o, a, loc))
    return from_parsed(parsed, n_options, pad=pad, name=fmt, domain=domain, where=f"path: {p}")


def _fields(fmt: str) -> str:
    return {"openbookqa": "question, answerKey", "arc": "question, answerKey",
            "sciq": "question, correct_answer, distractor1..3",
            "medmcqa": "question, opa..opd, cop"}[fmt]


def load_split(spec: str, domain: str, n_options: int | None, limit: int = 0) -> MCQA:
    """'PATH:FORMAT[,PATH:FORMAT|tfds:NAME[:SPLIT]...]' -> one MCQA (every file's items, the first
    `limit`; 0 = all). tfds:NAME[:SPLIT] reads data prepared in $TFDS_DATA_DIR
    (`mcqa_tfds.load_mcqa_tfds`, split "test" by default); items with another option count than
    `n_options` are dropped and counted (`MCQA.n_dropped`)."""
    from routecal.data import mcqa_tfds

    parts = []
    for item in (s for s in spec.split(",") if s):
        if item.startswith("tfds:"):
            name, _, split = item.removeprefix("tfds:").partition(":")
            parts.append(mcqa_tfds.load_mcqa_tfds(name, split or "test", n_options=n_options,
                                                  domain=domain))
            continue
        path, _, fmt = item.rpartition(":")
        if not path:
            raise ValueError(f"--{domain}: expected PATH:FORMAT, got {item!r}")
        parts.append(load_mcqa_file(path, fmt, n_options=n_options, domain=domain))
    q = [x for p in parts for x in p.questions][: limit or None]
    o = [x for p in parts for x in p.options][: limit or None]
    a = np.concatenate([p.answers for p in parts])[: limit or None]
    ds = mcqa.make_mcqa(q, o, a, name=spec, domain=domain)
    return dataclasses.replace(ds, n_dropped=sum(p.n_dropped for p in parts))


def encode_right_padded(ds: MCQA, tokenizer: Any, max_len: int) -> dict[str, np.ndarray]:
    """The prompts of `ds` (`mcqa.format_prompt` without its trailing space: a pretrained BPE
    vocabulary carries the space in the letter token) for a `tokenizers.Tokenizer`: ids [N, T]
    right-padded with 0, position [N] (each prompt's last token: an imported model has no
    attention mask, so left padding would be attended), token_mask [N, T] (1 on prompt tokens),
    answers [N]; prompts longer than `max_len` keep their last tokens."""
    rows = [tokenizer.encode(mcqa.format_prompt(q, o).rstrip()).ids[-max_len:]
            for q, o in ds.items()]
    t = max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1.0
    pos = np.array([len(r) - 1 for r in rows], np.int32)
    return {"ids": ids, "position": pos, "token_mask": mask, "answers": np.asarray(ds.answers)}


def spaced_letter_ids(tokenizer: Any, k: int) -> np.ndarray:
    """Token ids [K] of " A", " B", ... for a `tokenizers.Tokenizer`; ValueError unless each is
    exactly one token."""
    out = []
    for letter in mcqa.LETTERS[:k]:
        ids = tokenizer.encode(" " + letter, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"tokenizer: ' {letter}' is {len(ids)} tokens, need exactly 1")
        out.append(ids[0])
    return np.asarray(out, np.int32)
