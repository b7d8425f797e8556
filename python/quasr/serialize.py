"""Save and load quantized models: model.safetensors (packed buffers + float tensors) and
quasr_plan.json (the plan, tied-tensor aliases, provenance), beside the HF config and processor.
Loading builds the packed modules on the meta device and assigns the stored tensors: float weights
of quantized layers are never materialised."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from .integrity import json_digest, nonfinite, tensor_digest
from .plan import current_plan, empty_swap

# 2: per-tensor sha256 digests in quasr_plan.json, the plan's digest in the safetensors header
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no digests (loads with a warning)
PLAN_DIGEST_KEY = "quasr_plan_sha256"


class CheckpointError(ValueError):
    pass


def save_quantized(model, processor, out_dir: str | Path, meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write a quantized model to `out_dir`, all or nothing (see quasr.outputs): an existing quasr
    output there is replaced; a non-empty folder quasr did not write is refused unless `overwrite`."""
    from .outputs import OutputFolder

    with OutputFolder(out_dir, overwrite) as stage:
        write_quantized(model, processor, stage, meta)
    return Path(out_dir)


def write_quantized(model, processor, folder: str | Path, meta: dict | None = None) -> None:
    """The checkpoint's files, written into an existing (staging) folder."""
    from safetensors.torch import save_file

    out = Path(folder)
    state, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:  # tied tensors are stored once
            aliases[k] = seen[key]
            continue
        seen[key] = k
        state[k] = v.detach().cpu().contiguous()  # a model on a GPU saves like one on the CPU
    info = {"format_version": FORMAT_VERSION, "model_type": model.config.model_type, "plan": current_plan(model),
            "aliases": aliases, "sha256": {k: tensor_digest(v) for k, v in state.items()}, **(meta or {})}
    save_file(state, str(out / "model.safetensors"), metadata={PLAN_DIGEST_KEY: json_digest(info), "format": "pt"})
    _sort_safetensors_metadata(out / "model.safetensors")
    _save_config(model, out, info["plan"])
    if getattr(model, "generation_config", None) is not None:  # CTC models have none
        model.generation_config.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "quasr_plan.json").write_text(json.dumps(info, indent=1))


def _sort_safetensors_metadata(file: Path) -> None:
    """Rewrite the header's metadata with its keys sorted, in place: safetensors writes them in hash
    order, which differs from run to run, so two saves of one model would not be the same bytes.
    The header is JSON (8-byte little-endian length, then the text); only the order changes, never
    the length, so the tensor data does not move."""
    with open(file, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        raw = f.read(length)
        text = raw.rstrip(b" ")
        header = json.loads(text)
        meta = header.get("__metadata__")
        if not meta or list(meta) == sorted(meta):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) != len(text) or json.loads(new) != json.loads(text):
            return  # a serialisation quasr does not reproduce byte for byte: leave the file as written
        f.seek(8)
        f.write(new + raw[len(text):])


def _save_config(model, out: Path, plan: dict) -> None:
    """config.json with what transformers' from_pretrained needs to load the packed model itself:
    quantization_config (quasr's plan; see quasr.integrations) and the float dtype of the unquantized
    tensors (else its dtype="auto" takes the first float tensor it meets, e.g. float16 scales)."""
    from .integrations.transformers_quantizer import checkpoint_config

    config = model.config
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    saved = {k: getattr(config, k, None) for k in ("quantization_config", "dtype")}
    config.quantization_config = checkpoint_config(plan)
    config.dtype = floats[0] if floats else saved["dtype"]
    try:
        config.save_pretrained(out)
    finally:  # the in-memory model may be changed after saving; its config does not hold a stale plan
        for k, v in saved.items():
            setattr(config, k, v)


def _read_plan(path: Path) -> dict:
    """quasr_plan.json, checked for the shape every later step relies on."""
    try:
        info = json.loads((path / "quasr_plan.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}/quasr_plan.json is corrupt: {exc}") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}/quasr_plan.json must hold a JSON object, found {type(info).__name__}: "
                              f"the file is corrupt or not quasr's; re-create the checkpoint")
    version = info.get("format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: unsupported quasr format version {version!r} (this quasr reads "
                              f"{list(READABLE_VERSIONS)}); upgrade quasr or re-create the checkpoint")
    expected = {"plan": dict, "aliases": dict, **({"sha256": dict} if version >= 2 else {})}
    for key, kind in expected.items():
        if not isinstance(info.get(key, {} if key == "aliases" else None), kind):
            raise CheckpointError(f"{path}/quasr_plan.json: {key!r} must be a JSON object, found "
                                  f"{type(info.get(key)).__name__}; the file is corrupt: re-create the checkpoint")
    for key in ("aliases", "sha256"):
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in info.get(key, {}).items()):
            raise CheckpointError(f"{path}/quasr_plan.json: {key!r} must map tensor names to strings")
    return info


def _read_state(path: Path, info: dict) -> dict:
    """The stored tensors, verified against the digests and aliases of the plan."""
    from safetensors import SafetensorError, safe_open

    file = path / "model.safetensors"
    try:
        with safe_open(str(file), "pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is missing or corrupt: {exc}") from None
    if info["format_version"] >= 2:
        if header.get(PLAN_DIGEST_KEY) != json_digest(info):
            raise CheckpointError(f"{path}: quasr_plan.json does not belong to model.safetensors (its digest differs "
                                  f"from the one stored with the tensors): it was edited or comes from another save")
        digests = info["sha256"]
        if set(digests) != set(state):
            raise CheckpointError(f"{path}: model.safetensors holds {sorted(set(state) - set(digests))[:4]} without a "
                                  f"digest and lacks {sorted(set(digests) - set(state))[:4]}; the checkpoint is corrupt")
        bad = [k for k, t in state.items() if tensor_digest(t) != digests[k]]
        if bad:
            raise CheckpointError(f"{path}: {len(bad)} stored tensor(s) fail their sha256 check ({bad[:4]}): "
                                  f"model.safetensors is corrupt; re-create or re-copy the checkpoint")
    else:
        warnings.warn(f"{path}: a format-1 quasr checkpoint has no digests, so its tensors cannot be verified; "
                      f"save it again to add them", stacklevel=3)
    for alias, target in info.get("aliases", {}).items():
        if alias in state:  # an alias only fills a tied tensor that is not stored
            raise CheckpointError(f"{path}: alias {alias!r} -> {target!r} would replace a stored tensor")
        if target not in state:
            raise CheckpointError(f"{path}: alias {alias!r} points at {target!r}, which is not stored")
        state[alias] = state[target]
    bad = nonfinite(state.items())
    if bad:
        raise CheckpointError(f"{path}: NaN or infinite values in {bad[:4]}: the checkpoint is corrupt")
    return state


def _restore_computed_buffers(model, model_class, config) -> None:
    """Non-persistent buffers (e.g. rotary inverse frequencies) are computed at construction, not
    saved; on the meta device they stay empty. Build an uninitialised CPU twin (torch.empty: no
    weights are touched) and take those buffers from it."""
    missing = [n for n, b in model.named_buffers() if b.is_meta]
    if not missing:
        return
    from transformers.initialization import no_init_weights

    with no_init_weights():
        twin = model_class(config)
    source = dict(twin.named_buffers())
    for name in missing:
        if name in source:
            parent, _, leaf = name.rpartition(".")
            model.get_submodule(parent).register_buffer(leaf, source[name].clone(), persistent=False)


def load_quantized(path: str | Path):
    """(model, processor) from a directory written by save_quantized."""
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from .adapters import adapter_class
    from .adapters.base import check_processor

    path = Path(path)
    info = _read_plan(path)
    state = _read_state(path, info)  # first: an edited plan is named as such before it is used
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}/config.json is missing or corrupt: {str(exc).splitlines()[0]}") from None
    try:
        model_class = adapter_class(config.model_type).model_class()
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    written = getattr(config, "quantization_config", None)  # format 2 saves since quasr 0.1.0 carry it
    written = written.get("plan") if isinstance(written, dict) else getattr(written, "plan", None)
    if written is not None and json_digest(written) != json_digest(info["plan"]):  # the plan itself matched the tensors
        raise CheckpointError(f"{path}: config.json's quantization_config holds a different plan from quasr_plan.json "
                              f"(which matches the stored tensors): config.json was edited; re-create the checkpoint")
    with torch.device("meta"):
        model = model_class(config)
    try:
        empty_swap(model, info["plan"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: plan does not fit the model config: {exc}") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and (tuple(state[k].shape) != tuple(expected[k].shape) or state[k].dtype != expected[k].dtype)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: checkpoint does not match its plan/config: missing {missing[:4]}, unexpected {unexpected[:4]}, "
            f"wrong shape/dtype {wrong[:4]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    _restore_computed_buffers(model, model_class, config)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{path}: tensors not restored from the checkpoint: {left[:4]}")
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(path)
    model.eval()
    from .integrations import attention

    attention.enable(model)  # as plan.swap does: a loaded model runs what the freshly quantized one ran
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the processor cannot be loaded: {str(exc).splitlines()[0]}") from None
    try:
        check_processor(model, processor, str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    return model, processor
