"""Early stops and loops of a transcript against a reference (labels or the float model's own)."""

import json

import pytest

from quasr.evaluate import normalizer
from quasr.faults import classify, longest_repeat, summarise

REF = "you may end the test by hanging up or by pressing the pound key"


def test_longest_repeat_counts_back_to_back_phrases():
    assert longest_repeat("a b a b a b c".split()) == (3, 2)
    assert longest_repeat("very very good".split()) == (1, 0)  # one word twice is speech, not a loop
    assert longest_repeat("no no no no".split()) == (4, 1)
    assert longest_repeat([]) == (1, 0)


@pytest.mark.parametrize("hyp, truncated, looped", [
    (REF, False, False),
    ("You may end the test by hanging up.", True, False),  # 6 of 14 words missing at the end
    ("", True, False),
    ("you may end the test by hanging up or by pressing the pound", False, False),  # one word short: an error, not a stop
    (REF + " " + REF + " " + REF, False, True),  # a sentence loop (14-word phrase, 3 times)
    (REF + " key key key key key", False, True),
    ("you may end end end the test by hanging up or by pressing the pound key", False, False),  # a stutter
    ("you may " * 20, False, True),  # looped in place of the sentence (substitutions, not an early stop)
])
def test_classify(hyp, truncated, looped):
    f = classify(REF, hyp, normalizer("en"))
    assert (f.truncated, f.looped) == (truncated, looped), f


def test_classify_runaway_without_a_clean_repeat():
    words = " ".join(f"w{i}" for i in range(40))
    assert classify("a b c d e", words).looped


def test_summarise_skips_empty_references():
    # no label, and a label that normalises to nothing (a filler word), are not judged
    s = summarise(["a", "b", "c", "d"], [REF, None, "uh", "hello there"], ["you may end", "x", "uh", "hello there"],
                  normalizer("en"))
    assert s["n_judged"] == 2 and s["n_truncated"] == 1 and s["truncated"] == ["a"] and s["n_looped"] == 0


@pytest.mark.filterwarnings("ignore")
def test_eval_reports_faults_against_labels_and_float(tmp_path, capsys):
    """`quasr quantize --eval` and `quasr eval` judge the quantized transcripts against the labels
    and the float model's transcripts (a quantized folder's recorded source, or --float)."""
    from conftest import tiny_family, write_clips
    from quasr.cli import main

    model, processor = tiny_family("whisper", tmp_path)
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    data = write_clips(tmp_path / "data")
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--bits", "3", "--group-size", "32", "--out", str(out), "--eval", str(data),
                 "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["faults"]["n_judged"] == 2 and q["vs_float"]["n_judged"] == 2 and q["vs_float"]["wer"] is not None
    assert main(["eval", str(out), "--data", str(data), "--json", "--transcripts"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["vs_float"] == q["vs_float"] and all("float" in t for t in r["transcripts"])
    assert main(["eval", str(out), "--data", str(data), "--json", "--float", "none"]) == 0
    assert "vs_float" not in json.loads(capsys.readouterr().out)
    assert main(["eval", str(src), "--data", str(data), "--float", str(src)]) == 0
    text = capsys.readouterr().out
    assert "against the float model's transcripts: 0.00% word disagreement, 0 stopped early, 0 looped" in text
    assert main(["eval", str(src), "--data", str(data), "--float", str(out)]) == 2
    assert "that model is quantized" in capsys.readouterr().err
