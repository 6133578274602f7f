"""Multiple-choice QA data: a validated item set, prompt encoding, and an embedded offline MCQA
built from the stdlib text corpus.

    ds = routecal.data.mcqa_formats.load_mcqa_file("/data/obqa/test.jsonl", "openbookqa")
    ds = continuation_mcqa(docs, n_items=512, seed=0, domain="near")
    ids_NxT = encode_prompts([format_prompt(q, o) for q, o in ds.items()], tokenizer, max_len)
    data = build_data(cfg.data, scoring="loglik")  # the embedded MCQA's tensors (VMoER on a decoder)

The published benchmark files are read by `routecal.data.mcqa_formats` (per-format answer
conventions) and `routecal.data.mcqa_tfds`; both hand their parsed items, each with its location in
the file, to `from_parsed`, which checks them and resolves option counts: items with different
counts are an error naming the file and where each count first occurs, unless the caller asks for
one count (`n_options`: the others are dropped and counted in `MCQA.n_dropped`) or for padding
(`pad`: short items get placeholder options, masked out by `option_mask` and counted in
`MCQA.n_padded`).

Letters: N items, K options, T tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

LETTERS = "ABCDEFGHIJ"
DOMAINS = ("in", "near", "far")  # the embedded MCQA's test domains
SCORINGS = ("letter", "loglik")  # option scorings (`build_data`)


@dataclasses.dataclass(frozen=True)
class MCQA:
    """N multiple-choice items with K options each (validated on construction).

    Attributes:
      questions: N non-empty strings. options: N tuples of K non-empty strings.
      answers: [N] int, the index of the correct option. name, domain: labels for tables.
      option_mask: [N, K] bool, False for a padding option (None: every option is real).
      n_padded: items that were padded. n_dropped: items of the source left out (another count).
    """

    questions: tuple[str, ...]
    options: tuple[tuple[str, ...], ...]
    answers: np.ndarray
    name: str = "mcqa"
    domain: str = "in"
    option_mask: np.ndarray | None = None
    n_padded: int = 0
    n_dropped: int = 0

    def __post_init__(self) -> None:
        check_items(self.questions, self.options, self.answers)
        if self.option_mask is not None:
            m = np.asarray(self.option_mask)
            if m.shape != (len(self), self.n_options) or m.dtype != bool:
                raise ValueError(f"option_mask: expected bool [{len(self)}, {self.n_options}], "
                                 f"got {m.dtype} {m.shape}")
            if not m[np.arange(len(self)), self.answers].all():
                raise ValueError("option_mask: an answer points at a padding option")

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


def check_scoring(scoring: str) -> str:
    """`scoring` if it is one of SCORINGS, else ValueError naming it."""
    if scoring not in SCORINGS:
        raise ValueError(f"experiment.scoring: unknown scoring {scoring!r}; use one of {SCORINGS}")
    return scoring


def encode_continuations(
    contexts: Sequence[str], options: Sequence[Sequence[str]], tokenizer: Any, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences context + option_k for every item and option.

    Returns:
      ids [N, K, T] (right-padded with the tokenizer's pad id; T the longest sequence, at most
      `max_len`: longer contexts keep their last tokens) and mask [N, K, T - 1] (float32, 1 where
      the next-token target ids[..., 1:] is an option token).
    """
    if len(contexts) != len(options):
        raise ValueError(f"options: {len(options)} option lists for {len(contexts)} contexts")
    rows = []
    for ctx, opts in zip(contexts, options, strict=True):
        c = np.asarray(tokenizer.encode(ctx.encode()), np.int32)
        item = []
        for o in opts:
            e = np.asarray(tokenizer.encode(o.encode()), np.int32)
            if not 1 <= len(e) < max_len:
                raise ValueError(f"options: an option of {len(e)} tokens needs 1..{max_len - 1}")
            item.append((c[-(max_len - len(e)) :], e))
        rows.append(item)
    t = max(len(c) + len(e) for item in rows for c, e in item)
    n, k = len(rows), len(rows[0])
    ids = np.full((n, k, t), tokenizer.pad, np.int32)
    mask = np.zeros((n, k, t - 1), np.float32)
    for i, item in enumerate(rows):
        for j, (c, e) in enumerate(item):
            ids[i, j, : len(c) + len(e)] = np.concatenate([c, e])
            mask[i, j, len(c) - 1 : len(c) + len(e) - 1] = 1.0  # targets ids[len(c):...]
    return ids, mask


def build_data(dcfg: Any, scoring: str = "letter") -> dict[str, Any]:
    """Corpus LM rows [N, T + 1] and the MCQA tensors of each split (train, calib, in, near, far;
    calib = the last `n_calib_items` items drawn from the training documents, held out of
    train, for choices such as beta that must never see a test split):
    {"lm", "scoring", "mcqa": {split: {"ids", "answers" [N] (+ "mask")}}, "letters" [K],
    "tokenizer"}: "letter" ids [N, T] are left-padded prompts (`encode_prompts`), "loglik" ids
    [N, K, T] and mask [N, K, T - 1] the context + option sequences (`encode_continuations`)."""
    from routecal.data.text import ByteTokenizer, make_split, stdlib

    check_scoring(scoring)
    tok = ByteTokenizer()
    docs = {
        "train": [b for _, b in stdlib.corpus_texts("in", "train", seed=int(dcfg.corpus_seed))],
        "in": [b for _, b in stdlib.corpus_texts("in", "test", seed=int(dcfg.corpus_seed))],
        "near": [b for _, b in stdlib.corpus_texts("near")],
        "far": [b for _, b in stdlib.corpus_texts("far")],
    }
    lm = make_split(
        docs["train"], "in", tok, int(dcfg.lm_seq_len), int(dcfg.lm_max_bytes), "train"
    ).ids.astype(np.int32)
    sets = {}
    n_calib = int(dcfg.get("n_calib_items", 0))
    for i, split in enumerate(("train", *DOMAINS)):
        n = int(dcfg.n_train_items if split == "train" else dcfg.n_eval_items)
        n += n_calib if split == "train" else 0
        ds = continuation_mcqa(
            docs[split],
            n_items=n,
            seed=int(dcfg.mcqa_seed) * 10 + i,
            context_len=int(dcfg.context_len),
            option_len=int(dcfg.option_len),
            domain=split,
        )
        entry: dict[str, np.ndarray] = {"answers": ds.answers.astype(np.int32)}
        if scoring == "letter":
            prompts = [format_prompt(q, o) for q, o in ds.items()]
            entry["ids"] = encode_prompts(prompts, tok, int(dcfg.max_prompt_len))
        else:
            entry["ids"], entry["mask"] = encode_continuations(
                ds.questions, ds.options, tok, int(dcfg.max_prompt_len)
            )
        sets[split] = entry
    if n_calib:
        train = sets["train"]
        cut = len(train["answers"]) - n_calib
        sets["calib"] = take(train, slice(cut, None))
        sets["train"] = take(train, slice(0, cut))
    letters = letter_ids(tok, 4)
    return {"lm": lm, "scoring": scoring, "mcqa": sets, "letters": letters, "tokenizer": tok}


# ----------------------------------------------------------------------------------------------
# Parsed items of a file -> MCQA (option counts resolved)
# ----------------------------------------------------------------------------------------------

PAD_OPTION = "(no option)"


def _first_at(parsed: Sequence[tuple[str, Sequence[str], int, str]]) -> dict[int, tuple[int, str]]:
    """{option count: (items with it, location of the first)} in file order."""
    out: dict[int, tuple[int, str]] = {}
    for _, o, _, loc in parsed:
        n, first = out.get(len(o), (0, loc))
        out[len(o)] = (n + 1, first)
    return out


def from_parsed(
    parsed: Sequence[tuple[str, Sequence[str], int, str]], n_options: int | None = None, *,
    pad: bool = False, name: str, domain: str, where: str,
) -> MCQA:
    """An `MCQA` of parsed (question, options, answer, location) items, checked item by item.

    Args:
      parsed: items in file order; `location` is "line 12" / "item 3" / "record 7".
      n_options: keep only items with this many options (the rest are counted in `n_dropped`).
        None: every item must have the same count, unless `pad`.
      pad: pad items with fewer options (than `n_options`, default the largest count) with
        `PAD_OPTION`, masked out in `option_mask`; items with more are dropped (counted).
      where: the file (or TFDS split), named in every error.
    Raises:
      ValueError: naming `where` and the item's location: an empty question or option, an answer
        outside the item's options, mixed option counts (with the count of each and where it
        first occurs), or no item left.
    """
    if not parsed:
        raise ValueError(f"{where}: holds no items")
    for q, o, a, loc in parsed:
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{where} {loc}: empty question")
        bad = [LETTERS[i] if i < len(LETTERS) else str(i) for i, x in enumerate(o)
               if not isinstance(x, str) or not x.strip()]
        if bad:
            raise ValueError(f"{where} {loc}: empty option(s) {bad}")
        if not 0 <= a < len(o):
            raise ValueError(f"{where} {loc}: answer index {a} outside its {len(o)} options")
    counts = _first_at(parsed)
    if len(counts) > 1 and n_options is None and not pad:
        detail = "; ".join(f"{k} options: {n} item(s), first at {loc}"
                           for k, (n, loc) in sorted(counts.items(), key=lambda x: -x[1][0]))
        raise ValueError(
            f"{where}: items have different option counts ({detail}); pass n_options=K to keep "
            f"only the K-option items, or pad=True to pad to {max(counts)} masked options")
    k = n_options or max(counts)
    kept = [(q, tuple(o), a) for q, o, a, _ in parsed if len(o) == k or (pad and len(o) < k)]
    if not kept:
        raise ValueError(f"{where}: no item has {k} options (counts: "
                         f"{ {c: n for c, (n, _) in sorted(counts.items())} })")
    mask = np.array([[j < len(o) for j in range(k)] for _, o, _ in kept])
    q, o, a = zip(*kept, strict=True)
    o = tuple(x + (PAD_OPTION,) * (k - len(x)) for x in o)
    return MCQA(tuple(q), o, np.asarray(a, np.int64), name, domain,
                option_mask=mask if pad else None, n_padded=int((~mask).any(axis=1).sum()),
                n_dropped=len(parsed) - len(kept))


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


def take(entry: dict[str, np.ndarray], idx: Any) -> dict[str, np.ndarray]:
    """The items `idx` of every array of an MCQA split (leading axis N)."""
    return {k: v[idx] for k, v in entry.items()}
