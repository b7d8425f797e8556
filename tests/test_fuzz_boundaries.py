"""Fuzzing the boundaries where users' files enter quasr: manifests (and folders' transcripts), hf:
specs, sweep configs, and the cells.jsonl a resumable run appends to. Whatever is malformed, `quasr`
must answer with one `quasr: error:` line on stderr and a non-zero exit, before any model loads (never a
traceback, never exit 0); a last cells line cut short by a killed run is dropped with a warning."""

import json
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import quasr.models
from quasr.cli import main
from quasr.schema import InputError, append_json_line
from quasr.experiments.sweep import Sweep, SweepConfig

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Bad input must be refused before a model loads: loading one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(quasr.models, "load_model", refuse)


def cli_error(capsys, argv: list[str]) -> str:
    """The one `quasr: error:` line that `quasr argv` must end with (non-zero exit, no traceback)."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0, f"exit 0 on bad input: {argv}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("quasr: error:"), err
    return lines[-1]


def _wav(folder):
    path = folder / "ok.wav"
    if not path.exists():
        sf.write(path, np.zeros(1600, np.float32), 16000)
    return path


# -- values, as JSON and YAML carry them ------------------------------------------------------------
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
                      max_leaves=6)
not_strings = values.filter(lambda v: not isinstance(v, str))
non_null_not_strings = not_strings.filter(lambda v: v is not None)


# -- 1. manifests -----------------------------------------------------------------------------------
def _bad_field(key: str):
    """Rows whose `key` is of a wrong type (the audio file itself exists)."""
    wrong = {
        "audio": not_strings | st.sampled_from(["", "   "]),
        "text": non_null_not_strings,
        "language": non_null_not_strings | st.sampled_from(["", " "]),
        "speaker": non_null_not_strings,
        "gender": non_null_not_strings,
        "duration": (values.filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))))
                    | st.floats(max_value=-1e-9, allow_nan=False) | st.sampled_from([float("inf")]),
    }[key]
    return wrong.map(lambda v: json.dumps({"audio": "ok.wav", key: v}))


def _not_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# lines that are not JSON: text, or bytes that are not even UTF-8
not_json_lines = st.one_of(
    st.text(max_size=30).filter(lambda s: "\n" not in s and s.strip() and _not_json(s)).map(str.encode),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and not _decodes(b)))
bad_manifest_lines = st.one_of(
    values.filter(lambda v: not isinstance(v, dict)).map(json.dumps).map(str.encode),  # a list, a string, null...
    st.dictionaries(_text.filter(lambda k: k != "audio"), values, max_size=3).map(json.dumps).map(str.encode),
    *[_bad_field(k).map(str.encode) for k in ("audio", "text", "language", "speaker", "gender", "duration")],
    not_json_lines,
)


@FUZZ
@given(bad=bad_manifest_lines, before=st.integers(0, 3), after=st.integers(0, 2))
def test_fuzzed_manifest_lines_are_named_errors(tmp_path, capsys, bad, before, after):
    _wav(tmp_path)
    good = json.dumps({"audio": "ok.wav", "text": "hello", "language": "en"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(b"\n".join([good.encode()] * before + [bad] + [good.encode()] * after))
    line = cli_error(capsys, ["eval", "whisper-tiny.en", "--data", str(manifest)])
    assert f"m.jsonl:{before + 1}:" in line  # the file and the bad line


@FUZZ
@given(audio=st.lists(_text.filter(lambda s: s.strip() and s != "ok.wav"), min_size=1, max_size=4))
def test_fuzzed_missing_audio_is_named_before_a_model_loads(tmp_path, capsys, audio):
    _wav(tmp_path)
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": "ok.wav"}] + [{"audio": f"missing/{a}"} for a in audio]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    line = cli_error(capsys, ["eval", "whisper-tiny.en", "--data", str(manifest)])
    assert f"{len(audio)} audio file" in line and "line 2:" in line and "not found" in line


@FUZZ
@given(data=st.binary(min_size=1, max_size=20).filter(lambda b: not _decodes(b)))
def test_fuzzed_transcript_files_are_named_errors(tmp_path, capsys, data):
    _wav(tmp_path)
    (tmp_path / "ok.txt").write_bytes(data)
    line = cli_error(capsys, ["eval", "whisper-tiny.en", "--data", str(tmp_path)])
    assert "ok.txt" in line and "transcript" in line



# -- 2. hf: specs -----------------------------------------------------------------------------------
@FUZZ
@given(spec=st.text(max_size=30))
def test_fuzzed_hf_specs_are_named_errors(capsys, monkeypatch, spec):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed, whatever this machine has
    line = cli_error(capsys, ["eval", "whisper-tiny.en", "--data", "hf:" + spec])
    assert "hf:NAME:SPLIT" in line or "pip install datasets" in line


# -- 3. sweep configs -------------------------------------------------------------------------------
def _sweep_base(tmp_path) -> dict:
    _wav(tmp_path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": "ok.wav", "text": "hi"}) + "\n")
    return {"models": ["whisper-tiny.en"], "methods": ["rtn"], "configs": ["W4A16"],
            "datasets": [{"name": "d", "data": str(manifest)}]}


def _lists_with_a_non_name(min_size=1):
    return st.lists(st.text(min_size=1).filter(str.strip) | non_null_not_strings | st.just(""), min_size=min_size,
                    max_size=3).filter(lambda xs: any(not isinstance(x, str) or not x.strip() for x in xs))


_not_lists = values.filter(lambda v: v is not None and not isinstance(v, list))
_not_mappings = values.filter(lambda v: v is not None and not isinstance(v, dict))
_not_positive_ints = values.filter(lambda v: v is not None and not (type(v) is int and v > 0))
_name_lists = _not_lists | _lists_with_a_non_name()
WRONG_VALUES = {
    "models": _name_lists | st.just([]),
    "methods": _name_lists | st.lists(st.sampled_from(["gtpq", "RTN", "awq2"]), min_size=1, max_size=2),
    "configs": _name_lists | st.lists(st.sampled_from(["W9A16", "W4A1", "4bit", "W4A16g33"]), min_size=1, max_size=2),
    "keep": _name_lists,
    "datasets": _not_lists | st.lists(_not_mappings, min_size=1, max_size=2)
                | st.sampled_from([[{"name": "d"}], [{"data": "x"}], [{"name": "d", "data": "x", "limit": 0}],
                                   [{"name": "d", "data": "x", "limit": "ten"}], [{"name": 3, "data": "x"}],
                                   [{"name": "d", "data": "x", "lang": "en"}]]),
    "calibration": _not_mappings | _not_positive_ints.map(lambda v: {"limit": v})
                   | st.dictionaries(st.sampled_from(["source", "n", "clips"]), values, min_size=1, max_size=1),
    "method_options": _not_mappings | _not_mappings.map(lambda v: {"gptq": v})
                      | st.sampled_from([{"gtpq": {}}, {"gptq": {"dmp": 1}}, {"gptq": {"damp": 5}}]),
    "only": _not_mappings | _not_mappings.map(lambda v: {"whisper-tiny.en": v})
            | st.sampled_from([{"other-model": {}}, {"whisper-tiny.en": {"datasets": ["nope"]}},
                               {"whisper-tiny.en": {"methods": "rtn"}}, {"whisper-tiny.en": {"bits": [4]}}]),
    "batch_size": _not_positive_ints,
    "include_float": values.filter(lambda v: v is not None and not isinstance(v, bool)),
    "act_granularity": values.filter(lambda v: v is not None and v not in ("token", "tensor")),
    "device": non_null_not_strings | st.sampled_from(["", "  "]),
}


@FUZZ
@given(data=st.data(), key=st.sampled_from(sorted(WRONG_VALUES)))
def test_fuzzed_sweep_values_are_named_errors(tmp_path, capsys, data, key):
    cfg = {**_sweep_base(tmp_path), key: data.draw(WRONG_VALUES[key], label=key)}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    line = cli_error(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert "sweep.yaml: " in line and f"`{key}" in line  # the file and the key


@FUZZ
@given(key=_text.filter(lambda k: k not in WRONG_VALUES), value=values)
def test_fuzzed_unknown_sweep_keys_are_named(tmp_path, capsys, key, value):
    assume(value is not None)  # a key with no value is left out
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**_sweep_base(tmp_path), key: value}))
    assert "unknown keys" in cli_error(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")])


@FUZZ
@given(doc=values.filter(lambda v: not isinstance(v, dict)).map(yaml.safe_dump) | st.text(max_size=40))
def test_fuzzed_sweep_documents_are_named_errors(tmp_path, capsys, doc):
    """Whole documents that are no config: lists, scalars, random text (mostly invalid YAML or a string)."""
    path = tmp_path / "sweep.yaml"
    path.write_text(doc)
    assert "sweep.yaml" in cli_error(capsys, ["sweep", str(path), "--out", str(tmp_path / "out")])


# -- 4. cells.jsonl ---------------------------------------------------------------------------------
def _row(i: int) -> dict:
    return {"model": "m", "method": "rtn", "config": f"W{2 + i % 7}A16", "dataset": f"d{i}", "wer": 1.5 * i,
            "n_clips": 2, "size_mb": 1.0, "gbops_per_audio_s": 3.0, "mem_io_mb_per_audio_s": 4.0, "rtf": 0.1}


@FUZZ
@given(n=st.integers(1, 5), cut=st.floats(0, 1, exclude_max=True))
def test_fuzzed_truncated_cells_tail_is_dropped_and_resumable(tmp_path, n, cut):
    """A run killed mid-write leaves part of its last line: it is dropped with a warning naming file and
    line, cut from the file, and the next append (that cell, rerun) starts a clean line."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    cells = out / "cells.jsonl"
    lines = [json.dumps(_row(i)) + "\n" for i in range(n)]
    partial = lines[-1][: 1 + int(cut * (len(lines[-1]) - 2))]  # never the whole line nor its newline
    cells.write_text("".join(lines[:-1]) + partial)
    sweep = Sweep(SweepConfig(models=["m"]), out)
    with pytest.warns(UserWarning, match=f"cells.jsonl:{n}: dropped a truncated last line"):
        done = sweep.finished()
    assert len(done) == n - 1 and cells.read_text() == "".join(lines[:-1])
    append_json_line(cells, _row(n - 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(sweep.finished()) == n


bad_cells_lines = st.one_of(
    not_json_lines,
    values.filter(lambda v: not isinstance(v, dict)).map(json.dumps).map(str.encode),
    st.sampled_from(["model", "method", "config", "dataset", "n_clips", "size_mb", "rtf"]).map(
        lambda k: json.dumps({f: v for f, v in _row(0).items() if f != k}).encode()),  # a key missing
    st.sampled_from(["model", "n_clips", "size_mb", "wer"]).flatmap(
        lambda k: st.sampled_from([[1], {}, True]).map(lambda v: json.dumps({**_row(0), k: v}).encode())),
)


@FUZZ
@given(bad=bad_cells_lines, before=st.integers(0, 3), after=st.integers(0, 2))
def test_fuzzed_corrupt_cells_line_is_named(tmp_path, capsys, bad, before, after):
    """A bad line that is not a cut-short tail is an error naming cells.jsonl and the line."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    lines = [json.dumps(_row(i)).encode() for i in range(before)] + [bad] + [
        json.dumps(_row(9 + i)).encode() for i in range(after)]
    (out / "cells.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(_sweep_base(tmp_path)))
    line = cli_error(capsys, ["sweep", str(path), "--out", str(out)])
    assert f"cells.jsonl:{before + 1}:" in line and "delete it" in line


# -- 5. quasr experiment ----------------------------------------------------------------------------
def test_experiment_data_is_checked_before_the_model_loads(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "ok.wav", "speaker": 7}\n')
    _wav(tmp_path)
    line = cli_error(capsys, ["experiment", "speaker", "whisper-tiny.en", "--data", str(manifest),
                              "--out", str(tmp_path / "out")])
    assert "m.jsonl:1: `speaker` must be a string or null, got the number 7" in line


def test_experiment_cells_drop_a_truncated_tail_and_name_a_corrupt_line(tmp_path):
    from quasr.experiments.personalisation import _Cells

    path = tmp_path / "speaker_cells.jsonl"
    settings = {"model": "m", "seed": 0}
    row = {"row": "float", "col": "a", "value": 50.0, "size_mb": 1.0, "avg_bits": 32.0, "settings": settings}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "col": "b"})[:25])
    with pytest.warns(UserWarning, match="speaker_cells.jsonl:2: dropped a truncated last line"):
        assert list(_Cells(path, settings).done) == [("float", "a")]
    _Cells(path, settings).add("float", "b", value=25.0, size_mb=1.0, avg_bits=32.0)
    assert list(_Cells(path, settings).done) == [("float", "a"), ("float", "b")]
    path.write_text(json.dumps(row) + "\n[1, 2]\n" + json.dumps(row) + "\n")
    with pytest.raises(InputError, match="speaker_cells.jsonl:2: the line must be a JSON object .* got a list"):
        _Cells(path, settings)


def test_corrupt_float_transcript_cache_is_recomputed(tmp_path):
    from quasr.experiments.personalisation import FLOAT_TRANSCRIPTS, _read_cache

    cache = tmp_path / "gender_float_transcripts.json"
    for junk in ('{"F": {"ids": ["a"], "te', '["a"]', '{"F": {"ids": "a", "texts": []}}'):
        cache.write_text(junk)
        with pytest.warns(UserWarning, match="gender_float_transcripts.json: ignored and recomputed"):
            assert _read_cache(cache, FLOAT_TRANSCRIPTS) == {}
    cache.write_text('{"F": {"ids": ["a"], "texts": ["hi"]}}')
    assert _read_cache(cache, FLOAT_TRANSCRIPTS) == {"F": {"ids": ["a"], "texts": ["hi"]}}
