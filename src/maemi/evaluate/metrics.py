"""Generation metrics: BLEU-2, BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L, METEOR and CIDEr, as mean and standard deviation over
samples, overall and per group (task, question family), as the MAEMI paper reports them (Tables 1 and 3-6).

Decisions (the paper leaves them open):
- One tokenisation for every metric (`tokenize`): lowercase; numbers with inner separators stay whole ("11,000",
  "3.5", "5.2nm"); words keep inner hyphens, apostrophes and slashes ("well-defined", "and/or"); "%", "°" and "×" are
  tokens of their own; every other punctuation mark is dropped, as pycocoevalcap's PTBTokenizer drops it. That
  tokenizer needs Java and a process per call, so it is not used.
- Scores are per sample; "mean" and "std" summarise them (std is the population std, ddof=0: the spread of the
  per-sample scores, not a standard error). BLEU-n is pycocoevalcap's per-sample BLEU (cumulative 1..n-gram precision,
  brevity penalty per sentence), so its mean is not corpus BLEU.
- CIDEr (CIDEr-D as pycocoevalcap computes it, 0..10) weighs n-grams by an IDF taken over the references of the whole
  evaluated set: scores depend on the set (one sample alone, or an n-gram in every reference, weighs zero), and the
  per-group CIDEr summarises the whole-set per-sample scores rather than recomputing IDF per group.
- ROUGE-1/2/L are F-measures from rouge-score (ROUGE-L: sentence-level LCS), without stemming.
- METEOR runs meteor-1.5.jar in one Java process per Python process, started on first use (~6 s) and closed at exit;
  a lock serialises its use across threads. Without Java, METEOR raises MeteorUnavailable rather than reporting a
  partial table: the paper's headline metric and the demo's image-shuffling control both need it.

References:
- Papineni et al. (2002), BLEU; Lin (2004), ROUGE; Banerjee & Lavie (2005) and Denkowski & Lavie (2014), METEOR 1.5;
  Vedantam et al. (2015), CIDEr.
- pycocoevalcap 1.2 (the COCO caption evaluation code): Bleu, Meteor and Cider scorers, called one by one, never
  COCOEvalCap.evaluate (it runs SPICE, which downloads Stanford CoreNLP).
- rouge-score 0.1.2 (Google Research).
"""

from __future__ import annotations

import atexit
import re
import shutil
import threading

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from rouge_score.rouge_scorer import RougeScorer

METRICS: tuple[str, ...] = ("BLEU-2", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "METEOR", "CIDEr")

# Numbers with inner "," or "." first (so "11,000" is not split), then words with inner - ' / , then unit symbols.
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+\w*|\w+(?:[-'/]\w+)*|[%°×]")


class MeteorUnavailable(RuntimeError):
    """METEOR cannot run: no Java, or its Java process failed."""


def tokenize(text: str) -> list[str]:
    """The tokenisation every metric here uses (see the module docstring)."""
    return _TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


class _RougeTokenizer:
    """rouge-score takes any object with tokenize(); ours keeps ROUGE on the same tokens as BLEU, METEOR and CIDEr."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)


# ------------------------------------------------------------------------------------------------------------ METEOR

_meteor: Meteor | None = None
_meteor_lock = threading.Lock()
_meteor_atexit_registered = False


def _close_meteor_locked() -> None:
    global _meteor
    if _meteor is None:
        return
    scorer, _meteor = _meteor, None
    # pycocoevalcap's __del__ takes scorer.lock, which a failed compute_score leaves held: a fresh lock keeps the
    # garbage collector from blocking on it.
    scorer.lock = threading.Lock()
    proc = scorer.meteor_p
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:  # the process may already be gone
            pass
    proc.kill()
    proc.wait()


def close_meteor() -> None:
    """Stop the METEOR Java process (registered at exit; a later score starts a new one)."""
    with _meteor_lock:
        _close_meteor_locked()


def _meteor_scores(references: list[str], hypotheses: list[str]) -> np.ndarray:
    global _meteor, _meteor_atexit_registered
    gts = {i: [r] for i, r in enumerate(references)}
    res = {i: [h] for i, h in enumerate(hypotheses)}
    with _meteor_lock:
        if _meteor is None:
            if shutil.which("java") is None:
                raise MeteorUnavailable(
                    "METEOR needs Java: pycocoevalcap runs meteor-1.5.jar with `java`, which is not on PATH "
                    "(install a Java runtime, e.g. `apt-get install default-jre-headless`)"
                )
            _meteor = Meteor()
            if not _meteor_atexit_registered:
                atexit.register(close_meteor)
                _meteor_atexit_registered = True
        try:
            _, scores = _meteor.compute_score(gts, res)
        except (ValueError, OSError) as e:
            # A dead JVM answers with an empty line (float('') fails) or a broken pipe; pycocoevalcap's own lock is
            # left held, so this instance is dropped and the next call starts a fresh one.
            proc = _meteor.meteor_p
            _close_meteor_locked()
            detail = proc.stderr.read().decode(errors="replace").strip()[-2000:] if proc.stderr else ""
            raise MeteorUnavailable(f"METEOR's Java process failed: {e}. Its stderr: {detail or '(empty)'}") from e
    return np.asarray(scores, dtype=np.float64)


# ------------------------------------------------------------------------------------------------------------ scores


def per_sample_scores(references: list[str], hypotheses: list[str]) -> dict[str, np.ndarray]:
    """Each metric in METRICS -> its score for every sample, shape (N,), in input order. One reference per sample."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses: one of each per sample")
    if not references:
        raise ValueError("no samples to score")
    refs = [" ".join(tokenize(r)) for r in references]
    hyps = [" ".join(tokenize(h)) for h in hypotheses]  # an empty answer is allowed: it scores 0
    empty = [i for i, r in enumerate(refs) if not r]
    if empty:
        raise ValueError(f"reference(s) at sample index {empty[:10]} have no words after tokenisation")

    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    _, bleu = Bleu(4).compute_score(gts, res, verbose=0)  # bleu[k]: per-sample BLEU-(k+1)
    _, cider = Cider().compute_score(gts, res)

    rouge_types = ("rouge1", "rouge2", "rougeL")
    rouge = RougeScorer(list(rouge_types), tokenizer=_RougeTokenizer())
    rouge_f = np.array(
        [[score[t].fmeasure for t in rouge_types] for score in map(rouge.score, refs, hyps)], dtype=np.float64
    ).reshape(len(refs), len(rouge_types))  # (N, 3)

    return {
        "BLEU-2": np.asarray(bleu[1], dtype=np.float64),
        "BLEU-4": np.asarray(bleu[3], dtype=np.float64),
        "ROUGE-1": rouge_f[:, 0],
        "ROUGE-2": rouge_f[:, 1],
        "ROUGE-L": rouge_f[:, 2],
        "METEOR": _meteor_scores(refs, hyps),
        "CIDEr": np.asarray(cider, dtype=np.float64),
    }


def summarise_scores(scores: dict[str, np.ndarray], groups: dict[str, list[str]] | None = None) -> dict:
    """Per-sample scores -> {"n", "overall": {metric: {"mean", "std"}}, "groups": {key: {value: {"n", metric: ...}}}}.

    groups maps a grouping name ("task", "family") to one value per sample; each distinct value (sorted) gets the
    mean and std of its samples' scores.
    """
    n = len(next(iter(scores.values())))
    if any(len(v) != n for v in scores.values()):
        raise ValueError("every metric must have one score per sample")

    def summary(idx: np.ndarray) -> dict:
        out: dict = {"n": int(len(idx))}
        for name, values in scores.items():
            picked = np.asarray(values, dtype=np.float64)[idx]
            out[name] = {"mean": float(picked.mean()), "std": float(picked.std())}
        return out

    result: dict = {"n": n, "overall": summary(np.arange(n)), "groups": {}}
    for key, values in (groups or {}).items():
        if len(values) != n:
            raise ValueError(f"group {key!r} has {len(values)} values for {n} samples: one per sample")
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise ValueError(f"group {key!r} has non-string values at sample index {bad[:10]}")
        labels = np.asarray(values, dtype=object)
        result["groups"][key] = {v: summary(np.flatnonzero(labels == v)) for v in sorted(set(values))}
    return result


def generation_metrics(
    references: list[str], hypotheses: list[str], groups: dict[str, list[str]] | None = None
) -> dict:
    """BLEU-2/4, ROUGE-1/2/L, METEOR, CIDEr of hypotheses against references, mean and std over samples.

    Returns {"n": N, "overall": {"n": N, "BLEU-2": {"mean": m, "std": s}, ...},
             "groups": {"task": {"caption": {"n": k, "BLEU-2": {...}, ...}, ...}, "family": {...}}}.
    """
    return summarise_scores(per_sample_scores(references, hypotheses), groups)
