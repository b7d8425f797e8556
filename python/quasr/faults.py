"""Decoding faults of a transcript against a reference transcript (the float model's own, or the
label): a **truncation** (the transcript stops early: the reference's last words are all missing)
and a **loop** (the transcript repeats a phrase more than the reference does and runs longer, or
runs on to more than twice the reference's length, as a looping decoder does until its token cap). A
low-bit model's WER hides them in an average; these count them per clip, so an evaluation can say
"2 of 100 clips stopped early, 1 looped" (issue 23).

Both texts are compared after the same normalisation WER uses (evaluate.normalizer)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# a truncation drops at least this many of the reference's final words, and this share of them
TRUNCATION_MIN_WORDS = 3
TRUNCATION_MIN_SHARE = 0.25
# a loop repeats one phrase (1-8 words) at least this many times in a row (a single word: one more),
# more often than the reference does, in a transcript this much longer than the reference
LOOP_MIN_REPEATS = 3
LOOP_MIN_GROWTH = 1.2
MAX_PHRASE = 40  # Whisper loops whole sentences
# or the transcript runs on: more than twice the reference's words plus this many
RUNAWAY_EXTRA_WORDS = 5


def longest_repeat(words: list[str]) -> tuple[int, int]:
    """(repeats, phrase length) of the longest run of one phrase (1 to MAX_PHRASE words) repeated
    back to back; a run of one word ranks as one repeat less (so "very very good" gives (1, 0):
    nothing repeats); (1, 0) when nothing repeats."""
    best, best_n = 1, 0
    for n in range(1, MAX_PHRASE + 1):
        for start in range(len(words) - 2 * n + 1):
            reps, pos = 1, start + n
            while words[pos : pos + n] == words[start : start + n] and pos + n <= len(words):
                reps, pos = reps + 1, pos + n
            score = reps - (1 if n == 1 else 0)
            if score > best - (1 if best_n == 1 else 0):
                best, best_n = reps, n
    return best, best_n


@dataclass
class Fault:
    truncated: bool
    looped: bool
    dropped_tail: int  # reference words missing at the end of the transcript
    repeats: int  # longest back-to-back run of one phrase in the transcript
    ref_words: int
    hyp_words: int

    def as_dict(self) -> dict:
        return asdict(self)


def trailing_deletions(ref: list[str], hyp: list[str]) -> int:
    """How many of the reference's final words the transcript misses outright (an alignment's
    closing run of deletions)."""
    import jiwer

    if not ref:
        return 0
    if not hyp:
        return len(ref)
    chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]
    last = chunks[-1]
    return last.ref_end_idx - last.ref_start_idx if last.type == "delete" and last.ref_end_idx == len(ref) else 0


def classify(ref: str, hyp: str, normalise=None) -> Fault:
    """The faults of `hyp` against `ref` (both normalised with `normalise`, if given)."""
    if normalise is not None:
        ref, hyp = normalise(ref), normalise(hyp)
    r, h = ref.split(), hyp.split()
    dropped = trailing_deletions(r, h)
    truncated = dropped >= max(TRUNCATION_MIN_WORDS, TRUNCATION_MIN_SHARE * len(r))
    hyp_reps, hyp_n = longest_repeat(h)
    ref_reps, _ = longest_repeat(r)
    needed = LOOP_MIN_REPEATS + (1 if hyp_n == 1 else 0)
    looped = ((hyp_reps >= needed and hyp_reps > ref_reps and len(h) >= LOOP_MIN_GROWTH * len(r))
              or len(h) > 2 * len(r) + RUNAWAY_EXTRA_WORDS)
    return Fault(truncated, looped, dropped, hyp_reps, len(r), len(h))


def summarise(ids: list[str], refs: list[str], hyps: list[str], normalise=None) -> dict:
    """Counts and clip ids of truncated and looping transcripts; clips whose reference is empty
    after normalisation are not judged."""
    faults = {}
    for i, r, h in zip(ids, refs, hyps):
        if r is None or not (normalise(r) if normalise else r).strip():
            continue
        faults[i] = classify(r, h, normalise)
    return {
        "n_judged": len(faults),
        "n_truncated": sum(f.truncated for f in faults.values()),
        "n_looped": sum(f.looped for f in faults.values()),
        "truncated": [i for i, f in faults.items() if f.truncated],
        "looped": [i for i, f in faults.items() if f.looped],
    }
