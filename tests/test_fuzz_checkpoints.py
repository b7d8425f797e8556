"""Fuzz tests of two boundaries: the command line's arguments and a checkpoint folder (its plan and
its tensors). Whatever arrives, the outcome is a valid value / a loaded model, or one clear error:
never a traceback, never a model built from something the checkpoint does not say."""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import tiny_family
from quasr.cli import build_parser, main
from quasr.plan import swap, uniform_plan
from quasr.serialize import CheckpointError, load_quantized, save_quantized
from test_checkpoints import _rewrite

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


# -- command-line arguments ----------------------------------------------------------------------
NUMERIC_FLAGS = ["--limit", "--batch-size", "--budget-mb", "--avg-bits", "--group-size", "--bits", "--act-bits",
                 "--calib-limit", "--eval-limit"]
odd_numbers = (st.integers(-10**4, 10**4).map(str) | st.floats(allow_nan=True, allow_infinity=True).map(str)
               | st.sampled_from(["", " ", "nan", "-inf", "1e309", "0x10", "4.5", "four", "-1"]))


@FUZZ
@given(flag=st.sampled_from(NUMERIC_FLAGS), value=odd_numbers)
def test_numeric_arguments_parse_to_sane_values_or_one_error_line(flag, value, capsys):
    command = ["eval", "whisper-tiny.en"] if flag in ("--limit", "--batch-size") else ["quantize", "whisper-tiny.en",
                                                                                     "--out", "x"]
    try:
        args = build_parser().parse_args(command + [f"{flag}={value}"])
    except SystemExit as exc:
        err = capsys.readouterr().err
        assert exc.code == 2 and err.startswith("quasr: error: ") and err.count("\n") == 1, err
        return
    got = getattr(args, flag[2:].replace("-", "_"))
    checks = {"--limit": lambda v: v >= 1, "--batch-size": lambda v: v >= 1, "--calib-limit": lambda v: v >= 1,
              "--eval-limit": lambda v: v >= 1, "--budget-mb": lambda v: 0 < v < float("inf"),
              "--avg-bits": lambda v: 2 <= v <= 8, "--group-size": lambda v: v == -1 or (v > 0 and v % 32 == 0),
              "--bits": lambda v: 2 <= v <= 8, "--act-bits": lambda v: 2 <= v <= 8 or v == 16}
    assert checks[flag](got), (flag, value, got)


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint():
    model, processor = tiny_family("whisper")
    swap(model, uniform_plan(model, 4, 32), progress=False)
    folder = Path(tempfile.mkdtemp()) / "q"
    save_quantized(model, processor, folder)
    yield folder
    shutil.rmtree(folder.parent, ignore_errors=True)


def _copy(checkpoint) -> Path:
    dest = Path(tempfile.mkdtemp()) / "q"
    shutil.copytree(checkpoint, dest)
    return dest


def _paths(value, prefix=()):
    """Every path into a JSON value (dict keys and list indices)."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@FUZZ
@given(data=st.data())
def test_a_mutated_plan_loads_as_written_or_is_refused(checkpoint, data):
    folder = _copy(checkpoint)
    try:
        info = json.loads((folder / "quasr_plan.json").read_text())
        paths = [p for p in _paths(info) if p and p[0] != "sha256"]
        path = data.draw(st.sampled_from(paths))
        parent = info
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(json_values)
        _rewrite(folder, info)  # digests made to match: the plan's content itself is what is tested
        try:
            model, _ = load_quantized(folder)
        except CheckpointError:
            return
        from quasr.plan import check_spec, current_plan

        # it loaded: then it is exactly the model the plan describes
        assert current_plan(model) == {"layers": {n: check_spec(n, s) for n, s in info["plan"]["layers"].items()}}
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@FUZZ
@given(document=json_values)
def test_any_json_as_the_plan_is_refused(checkpoint, document):
    folder = _copy(checkpoint)
    try:
        (folder / "quasr_plan.json").write_text(json.dumps(document))
        with pytest.raises(CheckpointError):
            load_quantized(folder)
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)


@FUZZ
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_damaged_tensor_files_are_refused(checkpoint, flips, capsys):
    folder = _copy(checkpoint)
    try:
        raw = bytearray((folder / "model.safetensors").read_bytes())
        for pos, mask in {int(where * len(raw)): mask for where, mask in flips}.items():  # each byte changed once
            raw[pos] ^= mask
        (folder / "model.safetensors").write_bytes(bytes(raw))
        with pytest.raises(CheckpointError):
            load_quantized(folder)
        wav = folder.parent / "clip.wav"
        sf.write(wav, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
        assert main(["transcribe", str(folder), str(wav)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("quasr: error: ") and err.count("\n") == 1, err
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
