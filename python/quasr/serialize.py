"""Save and load quantized models: model.safetensors (packed buffers + float tensors) and
quasr_plan.json (the plan, tied-tensor aliases, provenance), beside the HF config and processor.
Loading builds the packed modules on the meta device and assigns the stored tensors: float weights
of quantized layers are never materialised."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .plan import current_plan, empty_swap

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    pass


def save_quantized(model, processor, out_dir: str | Path, meta: dict | None = None) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:  # tied tensors are stored once
            aliases[k] = seen[key]
            continue
        seen[key] = k
        state[k] = v.detach().cpu().contiguous()  # a model on a GPU saves like one on the CPU
    save_file(state, str(out / "model.safetensors"))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:  # CTC models have none
        model.generation_config.save_pretrained(out)
    processor.save_pretrained(out)
    info = {"format_version": FORMAT_VERSION, "model_type": model.config.model_type, "plan": current_plan(model),
            "aliases": aliases, **(meta or {})}
    (out / "quasr_plan.json").write_text(json.dumps(info, indent=1))
    return out


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
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from .adapters import adapter_class

    path = Path(path)
    try:
        info = json.loads((path / "quasr_plan.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/quasr_plan.json is corrupt: {exc}") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported quasr format version {info.get('format_version')!r}")
    config = AutoConfig.from_pretrained(path)
    try:
        model_class = adapter_class(config.model_type).model_class()
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    with torch.device("meta"):
        model = model_class(config)
    try:
        empty_swap(model, info["plan"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: plan does not fit the model config: {exc}") from None
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}/model.safetensors is missing or corrupt: {exc}") from None
    for alias, target in info.get("aliases", {}).items():
        if target in state:
            state[alias] = state[target]
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
    return model, AutoProcessor.from_pretrained(path)
