"""Multiple-choice QA data: a validated item set, prompt encoding, loaders for the published
benchmark files, and an embedded offline MCQA built from the stdlib text corpus.

    ds = load_mcqa_file("/data/obqa/test.jsonl", "openbookqa")      # nothing is downloaded
    ds = continuation_mcqa(docs, n_items=512, seed=0, domain="near")
    ids_NxT = encode_prompts([format_prompt(q, o) for q, o in ds.items()], tokenizer, max_len)

Published formats (Li & Wicker, arXiv:2603.09453, Sec. 5, evaluate on OpenBookQA in-domain, ARC-E/C
near and MedMCQA far; SciQ as in the thesis), JSONL / JSON / parquet as the publishers ship them:
  openbookqa, arc   {"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"} (AI2 JSONL)
                    or {"question_stem" | "question", "choices": {"text": [], "label": []},
                    "answerKey"} (the Hugging Face parquet);
  sciq              {"question", "correct_answer", "distractor1..3"}: options shuffled by `seed`;
  medmcqa           {"question", "opa".."opd", "cop"}: cop 1-based in the original JSON,
                    0-based in the Hugging Face parquet (`answer_base`, "auto" decides by range).
ARC mixes 3-, 4- and 5-option items; `n_options` keeps one count (default: the most common).
Where TFDS has a builder (ai2_arc, openbookqa), `routecal.data.mcqa_tfds.load_mcqa_tfds` reads the
prepared TFDS data instead.

Letters: N items, K options, T tokens.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"
FORMATS = ("openbookqa", "arc", "sciq", "medmcqa")


@dataclasses.dataclass(frozen=True)
class MCQA:
    """N multiple-choice items with K options each (validated on construction).

    Attributes:
      questions: N non-empty strings. options: N tuples of K non-empty strings.
      answers: [N] int, the index of the correct option. name, domain: labels for tables.
    """

    questions: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    answers: np.ndarray
    name: str = "mcqa"
    domain: str = "in"

    def __post_init__(self) -> None:
        check_items(self.questions, self.options, self.answers)

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def n_options(self) -> int:
        return len(self.options[0])

    def items(self) -> list[tuple[str, tuple[str, ...]]]:
        return list(zip(self.questions, self.options, strict=True))


def check_items(questions: Sequence[str], options: Sequence[Sequence[str]], answers: Any) -> None:
    """Raises ValueError naming the argument: empty set, empty question, options of different
    counts (or fewer than 2, or empty), answers not integers in [0, K) or of the wrong length."""
    if len(questions) == 0:
        raise ValueError("questions: is empty")
    if len(options) != len(questions):
        raise ValueError(f"options: {len(options)} option lists for {len(questions)} questions")
    for i, q in enumerate(questions):
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"questions[{i}]: empty question")
    counts = {len(o) for o in options}
    if len(counts) != 1:
        raise ValueError(f"options: items have different option counts {sorted(counts)}")
    k = counts.pop()
    if not 2 <= k <= len(LETTERS):
        raise ValueError(f"options: need 2..{len(LETTERS)} options per item, got {k}")
    for i, o in enumerate(options):
        if any(not isinstance(x, str) or not x.strip() for x in o):
            raise ValueError(f"options[{i}]: empty option")
    a = np.asarray(answers)
    if a.shape != (len(questions),) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"answers: expected {len(questions)} integers, got {a.dtype} {a.shape}")
    if a.min() < 0 or a.max() >= k:
        raise ValueError(
            f"answers: answer index out of range [0, {k}): {int(a.min())}..{int(a.max())}"
        )


def make_mcqa(questions, options, answers, *, name: str = "mcqa", domain: str = "in") -> MCQA:
    """A validated `MCQA` from Python sequences."""
    return MCQA(
        tuple(questions),
        tuple(tuple(o) for o in options),
        np.asarray(answers, dtype=np.int64) if len(answers) else np.zeros(0, np.int64),
        name,
        domain,
    )


# ----------------------------------------------------------------------------------------------
# Prompts
# ----------------------------------------------------------------------------------------------


def format_prompt(question: str, options: Sequence[str]) -> str:
    """`question`, one line "X. option" per option, then "Answer: " (the letter comes next)."""
    lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer: "


def letter_ids(tokenizer: Any, n_options: int) -> np.ndarray:
    """Token ids [K] of the letters A, B, ...; ValueError unless each letter is one token."""
    out = []
    for letter in LETTERS[:n_options]:
        ids = np.asarray(tokenizer.encode(letter.encode()))
        if ids.shape != (1,):
            raise ValueError(f"tokenizer: letter {letter!r} is {ids.size} tokens, need exactly 1")
        out.append(int(ids[0]))
    return np.asarray(out, np.int32)


def encode_prompts(texts: Sequence[str], tokenizer: Any, max_len: int) -> np.ndarray:
    """Token ids [N, T] (T = the longest prompt, at most `max_len`), left-padded with the
    tokenizer's pad id so every prompt ends at the last position; prompts longer than `max_len`
    keep their last `max_len` tokens (the options and "Answer: ")."""
    enc = [np.asarray(tokenizer.encode(t.encode()), np.int32)[-max_len:] for t in texts]
    t = max(len(e) for e in enc)
    ids = np.full((len(enc), t), tokenizer.pad, np.int32)
    for i, e in enumerate(enc):
        ids[i, t - len(e) :] = e
    return ids


# ----------------------------------------------------------------------------------------------
# Published benchmark files
# ----------------------------------------------------------------------------------------------


def read_records(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list, or {"data": [...]}) or .parquet file."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"path: MCQA file not found: {p} (nothing is downloaded; place it there)")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if p.suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:  # one object per line under a .json name (MedMCQA's release)
            obj = None
        if isinstance(obj, dict) and "data" in obj:
            obj = obj["data"]
        if isinstance(obj, list):
            return obj
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise ValueError(f"path: {p} is not JSONL, JSON or parquet ({e})") from e


def _ai2(row: dict[str, Any]) -> tuple[str, list[str], int]:
    q = row.get("question")
    if isinstance(q, dict):  # AI2 JSONL
        stem, choices = q["stem"], q["choices"]
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:  # Hugging Face parquet
        stem = row["question_stem"] if "question_stem" in row else row["question"]
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
    labels = [str(x) for x in labels]
    return stem, texts, labels.index(str(row["answerKey"]))


def _sciq(row: dict[str, Any], rng: np.random.Generator) -> tuple[str, list[str], int]:
    opts = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    perm = rng.permutation(4)
    return row["question"], [opts[j] for j in perm], int(np.argmax(perm == 0))


def _medmcqa(row: dict[str, Any], base: int) -> tuple[str, list[str], int]:
    return row["question"], [row[k] for k in ("opa", "opb", "opc", "opd")], int(row["cop"]) - base


def load_mcqa_file(
    path: str | pathlib.Path,
    fmt: str,
    *,
    n_options: int | None = None,
    seed: int = 0,
    answer_base: str | int = "auto",
    domain: str = "in",
) -> MCQA:
    """Loads one published benchmark file (`FORMATS`; see the module docstring).

    Args:
      path: a .jsonl, .json or .parquet file (ValueError naming it if missing).
      fmt: "openbookqa", "arc", "sciq" or "medmcqa".
      n_options: keep only items with this many options (default: the most common count).
      seed: SciQ option shuffle. answer_base: MedMCQA "cop" base (0, 1 or "auto").
      domain: label for tables ("in", "near", "far").
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: unknown MCQA format {fmt!r}; expected one of {FORMATS}")
    rows = read_records(path)
    if not rows:
        raise ValueError(f"path: {path} holds no rows")
    rng = np.random.default_rng(seed)
    parse: Callable[[dict[str, Any]], tuple[str, list[str], int]]
    if fmt in ("openbookqa", "arc"):
        parse = _ai2
    elif fmt == "sciq":
        parse = lambda r: _sciq(r, rng)  # noqa: E731
    else:
        cops = [int(r["cop"]) for r in rows]
        base = (0 if 0 in cops else 1) if answer_base == "auto" else answer_base
        if base not in (0, 1):
            raise ValueError(f"answer_base: must be 0, 1 or 'auto', got {answer_base!r}")
        parse = lambda r: _medmcqa(r, int(base))  # noqa: E731
    try:
        parsed = [parse(r) for r in rows]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"path: {path} does not look like {fmt} ({type(e).__name__}: {e})") from e
    return from_parsed(parsed, n_options, name=fmt, domain=domain, where=str(path))


def from_parsed(
    parsed: Sequence[tuple[str, Sequence[str], int]], n_options: int | None, *, name: str,
    domain: str, where: str,
) -> MCQA:
    """An `MCQA` of the parsed (question, options, answer) items that have `n_options` options
    (default: the most common count); ValueError naming `where` if none has."""
    k = n_options or Counter(len(o) for _, o, _ in parsed).most_common(1)[0][0]
    kept = [(q, o, a) for q, o, a in parsed if len(o) == k]
    if not kept:
        raise ValueError(f"n_options: no item of {where} has {k} options")
    q, o, a = zip(*kept, strict=True)
    return make_mcqa(q, o, a, name=name, domain=domain)


# ----------------------------------------------------------------------------------------------
# Embedded offline MCQA: choose the true continuation of a context
# ----------------------------------------------------------------------------------------------


def _ascii_span(doc: bytes, start: int, length: int) -> str | None:
    span = doc[start : start + length]
    if len(span) != length or not span.isascii() or not span.strip():
        return None
    return span.decode("ascii")


def continuation_mcqa(
    docs: Sequence[bytes],
    *,
    n_items: int,
    seed: int,
    context_len: int = 64,
    option_len: int = 24,
    n_options: int = 4,
    name: str = "stdlib-continuation",
    domain: str = "in",
    max_tries: int = 100,
) -> MCQA:
    """Given `context_len` bytes of a document, choose its true next `option_len` bytes among
    `n_options` candidates; the distractors are spans of the same length from *other* documents
    of `docs` (so they share the domain's style). Deterministic given `seed`.

    Spans are ASCII and not blank; every prompt therefore has the same byte length. The answer
    position is uniform over the K slots.

    Raises:
      ValueError: fewer than 2 documents long enough, or no valid span found in `max_tries`.
    """
    long_docs = [d for d in docs if len(d) >= context_len + option_len]
    if len(long_docs) < 2:
        raise ValueError(
            f"docs: need >= 2 documents of >= {context_len + option_len} bytes, got {len(long_docs)}"
        )
    rng = np.random.default_rng(seed)
    questions, options, answers = [], [], []
    for _ in range(n_items):
        for _ in range(max_tries):
            i = int(rng.integers(len(long_docs)))
            doc = long_docs[i]
            p = int(rng.integers(context_len, len(doc) - option_len + 1))
            ctx, true = (
                _ascii_span(doc, p - context_len, context_len),
                _ascii_span(doc, p, option_len),
            )
            if ctx is None or true is None:
                continue
            others = [j for j in range(len(long_docs)) if j != i]
            distract = []
            for _ in range(max_tries):
                d = long_docs[others[int(rng.integers(len(others)))]]
                s = _ascii_span(d, int(rng.integers(len(d) - option_len + 1)), option_len)
                if s is not None and s != true and s not in distract:
                    distract.append(s)
                if len(distract) == n_options - 1:
                    break
            if len(distract) == n_options - 1:
                break
        else:
            raise ValueError(f"docs: no valid item found in {max_tries} tries (too little ASCII?)")
        ans = int(rng.integers(n_options))
        opts = distract[:ans] + [true] + distract[ans:]
        questions.append(ctx)
        options.append(opts)
        answers.append(ans)
    return make_mcqa(questions, options, answers, name=name, domain=domain)
