"""`swap`: a plan's layers replaced by packed modules (or empty ones, to load a checkpoint), with the
input transforms PTQ methods choose (`LayerTransform`) installed beside each packed weight."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..format import PackedWeight
from ..integrity import check_finite_model
from ..nn import QuantConv1d, QuantLinear, QuantTiedEmbedding
from ..quantize import CLIP_METHODS, rtn_quantize
from .schema import KEEP, flat_weight, is_grouped_conv, quantizable_layers, validate_plan


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _tied_embeddings(model: nn.Module, linears: dict[str, nn.Module]) -> dict[str, list[str]]:
    """linear name -> names of nn.Embedding modules sharing its weight Parameter (by identity, which
    also works on the meta device where every data_ptr is 0)."""
    by_id = {id(m.weight): n for n, m in linears.items() if isinstance(m, nn.Linear)}
    tied: dict[str, list[str]] = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Embedding) and id(m.weight) in by_id:
            tied.setdefault(by_id[id(m.weight)], []).append(n)
    return tied


Quantizer = Callable[[str, torch.Tensor, dict], PackedWeight]


def rtn_quantizer(clip: str = "mse", importance: dict[str, torch.Tensor] | None = None) -> Quantizer:
    """RTN with the given clipping; "hessian" takes each layer's input second moments from
    `importance` (see quasr.allocation.sensitivity.collect_statistics)."""
    if clip not in CLIP_METHODS:
        raise ValueError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
    if clip == "hessian" and importance is None:
        raise ValueError("hessian clipping needs calibration statistics (input second moments per layer)")

    def quantize(name, w, spec):
        h = importance.get(name) if importance is not None else None
        # a layer calibration never reached (e.g. unused) falls back to plain MSE clipping
        c = "mse" if clip == "hessian" and h is None else clip
        return rtn_quantize(w, spec["bits"], spec["group_size"], spec["symmetric"], clip=c, name=name, importance=h)

    return quantize


@dataclass
class LayerTransform:
    """A PTQ method's input transforms for one layer (see nn._Packed): rotation signs (int8 [K]),
    per-channel input multiplier (float32 [K]), static activation (scale, zero), and a learned
    rotation's orthogonal Kronecker factors (left [a, a], right [b, b]; None: Hadamard), and a
    per-channel input shift delta (float32 [K], subtracted after the rotation; swap adds W delta to
    the bias, W the float weight rotated but not scaled)."""

    rotation_signs: torch.Tensor | None = None
    input_mul: torch.Tensor | None = None
    act_qparams: tuple[float, float] | None = None
    learned_rotation: tuple[torch.Tensor, torch.Tensor] | None = None
    input_shift: torch.Tensor | None = None

    def rotation(self):
        from ..rotation import Rotation

        if self.rotation_signs is None:
            return None
        return Rotation(self.rotation_signs, *(self.learned_rotation or (None, None)))


def default_rotation_signs(name: str, k: int) -> torch.Tensor:
    """Random +-1 signs of a layer's randomised Hadamard rotation, fixed by its name."""
    from ..rotation import random_signs

    return random_signs(k, zlib.crc32(name.encode()))


def transformed_weight(weight_2d: torch.Tensor, transform: LayerTransform | None) -> torch.Tensor:
    """The weight a layer stores, given its input transforms: W M (rotation), then / input_mul."""
    w = weight_2d
    if transform is not None and transform.rotation_signs is not None:
        w = transform.rotation().apply(w)
    if transform is not None and transform.input_mul is not None:
        w = w / transform.input_mul.to(w.device, torch.float32)
    return w


def swap(model: nn.Module, plan: dict, quantizer: Quantizer | None = None,
         weights: dict[str, PackedWeight] | None = None, progress: bool = True,
         transforms: dict[str, LayerTransform] | None = None, check_finite: bool = True,
         runtime_attention: bool = True) -> nn.Module:
    """Replace the plan's layers with packed modules, in place; returns the model.

    Packed weights come from `weights[name]` when given (a PTQ method's output, already of the
    transformed weight), else from `quantizer(name, transformed weight, spec)` (default: RTN with MSE
    clipping). `transforms[name]` gives a layer's rotation/smoothing/static activation range; a spec
    with "rotate" and no transform gets a randomised Hadamard rotation fixed by the layer's name.
    `check_finite` scans every tensor of the model for NaN/inf first (a caller swapping block by
    block checks once, before the first block). An nn.Embedding tied to a quantized Linear (Whisper's decoder.embed_tokens <-> proj_out) becomes
    a QuantTiedEmbedding reading the same packed rows, so the shared table is stored once.
    `runtime_attention`: a transformers model then gets quasr's attention where it applies
    (integrations/attention.py), as a loaded one does; a PTQ pipeline swapping block by block
    passes False and enables it once calibration is over.
    """
    specs = validate_plan(model, plan)
    if check_finite:  # a NaN bias or norm would ship as silently as a NaN weight
        check_finite_model(model, "swap")
    quantizer = quantizer or rtn_quantizer()
    transforms = dict(transforms or {})
    layers = quantizable_layers(model)
    tied = _tied_embeddings(model, layers)
    for name, spec in tqdm(list(specs.items()), desc="quantizing", disable=not progress, leave=False):
        if spec == KEEP:
            continue
        module = layers[name]
        if isinstance(module, nn.Conv1d):
            QuantConv1d.check_supported(module)
        tr = _layer_transform(name, module, spec, transforms.get(name))
        if tr is not None and tied.get(name) and (tr.rotation_signs is not None or tr.input_mul is not None):
            raise ValueError(f"{name}: a layer whose weight is tied to an embedding cannot be rotated or smoothed "
                             f"(the embedding reads the same stored rows); leave rotate/smooth off for it")
        if weights and name in weights:
            pw = weights[name]
        else:
            pw = quantizer(name, transformed_weight(flat_weight(module), tr), spec)
        new = QuantConv1d.from_float(module, pw) if isinstance(module, nn.Conv1d) else QuantLinear.from_float(module, pw)
        _apply_transform(new, spec, tr)
        if spec.get("shift"):  # y = W M (x M - delta) + (b + W M delta): the bias absorbs the shift
            w = transformed_weight(flat_weight(module).detach().float(), replace(tr, input_mul=None))
            new.bias = new.bias + (w @ tr.input_shift.to(w.device, torch.float32)).cpu()
        _install(model, name, new.to(module.weight.device), tied.get(name, []))
        new.prepare_runtime()
    if runtime_attention and any(spec != KEEP for spec in specs.values()):
        from ..integrations import attention

        attention.enable(model)
    return model


def _layer_transform(name: str, module: nn.Module, spec: dict, tr: LayerTransform | None) -> LayerTransform | None:
    k = flat_weight(module).shape[1]
    if spec.get("rotate") == "learned" and (tr is None or tr.learned_rotation is None or tr.rotation_signs is None):
        raise ValueError(f"{name}: the plan asks for a learned rotation but none was given (it comes from "
                         f"quantizing with spinquant)")
    if spec.get("rotate") and (tr is None or tr.rotation_signs is None):
        tr = LayerTransform(default_rotation_signs(name, k), tr.input_mul if tr else None, tr.act_qparams if tr else None)
    if spec.get("shift") and (tr is None or tr.input_shift is None):
        raise ValueError(f"{name}: the plan asks for an input shift but none was given (it comes from quantizing "
                         f"with omniquant)")
    if spec.get("smooth") and (tr is None or tr.input_mul is None):
        raise ValueError(f"{name}: the plan asks for smoothing scales but none were given (they come from a PTQ "
                         f"method: smoothquant, awq or omniquant)")
    if spec.get("act_granularity") == "tensor" and (tr is None or tr.act_qparams is None):
        raise ValueError(f"{name}: static (per-tensor) activation ranges need calibration: quantize with a method "
                         f"and calibration audio, or use act_granularity 'token'")
    if tr is not None:
        for t, what in ((tr.rotation_signs, "rotation_signs"), (tr.input_mul, "input_mul"), (tr.input_shift, "input_shift")):
            if t is not None and t.numel() != k:
                raise ValueError(f"{name}: {what} has {t.numel()} entries, the layer has {k} inputs")
        if tr.rotation_signs is not None:
            tr.rotation()  # checks learned factors' shapes against the layer
        if is_grouped_conv(module) and (tr.input_mul is not None or tr.input_shift is not None):
            raise ValueError(f"{name}: smoothing or shifting a grouped convolution is not supported (groups see "
                             f"different channels)")
    return tr


def _apply_transform(new: nn.Module, spec: dict, tr: LayerTransform | None) -> None:
    new.set_transforms(rotate=spec.get("rotate", False), smooth=bool(spec.get("smooth")), act=spec, device="cpu",
                       shift=bool(spec.get("shift")))
    if tr is None:
        return
    if spec.get("rotate"):
        new.rotation_signs = tr.rotation_signs.to(torch.int8).cpu().clone()
    if spec.get("rotate") == "learned":
        left, right = tr.learned_rotation
        new.rotation_left = left.detach().to(torch.float32).cpu().clone()
        new.rotation_right = right.detach().to(torch.float32).cpu().clone()
    if spec.get("smooth"):
        new.input_mul = tr.input_mul.to(torch.float32).cpu().clone()
    if spec.get("shift"):
        new.input_shift = tr.input_shift.to(torch.float32).cpu().clone()
    if spec.get("act_granularity") == "tensor":
        new.act_qparams = torch.tensor(tr.act_qparams, dtype=torch.float32)


def _install(model: nn.Module, name: str, new: nn.Module, tied_embeddings: list[str]) -> None:
    """Put a packed module in place, and point embeddings tied to it at its packed rows."""
    _set_module(model, name, new)
    for emb_name in tied_embeddings:
        emb = model.get_submodule(emb_name)
        _set_module(model, emb_name, QuantTiedEmbedding(new, emb.padding_idx, getattr(emb, "embed_scale", None)))


def empty_swap(model: nn.Module, plan: dict) -> None:
    """Like swap, but with empty packed modules (for loading a checkpoint without float weights)."""
    specs = validate_plan(model, plan)
    layers = quantizable_layers(model)
    tied = _tied_embeddings(model, layers)
    for name, spec in specs.items():
        if spec == KEEP:
            continue
        m = layers[name]
        kw = dict(bits=spec["bits"], group_size=spec["group_size"], symmetric=spec["symmetric"], bias=m.bias is not None, device="meta")
        if isinstance(m, nn.Conv1d):
            QuantConv1d.check_supported(m)
            new = QuantConv1d(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0], groups=m.groups, **kw)
        else:
            new = QuantLinear(m.in_features, m.out_features, **kw)
        new.set_transforms(rotate=spec.get("rotate", False), smooth=bool(spec.get("smooth")), act=spec, device="meta",
                           shift=bool(spec.get("shift")))
        _install(model, name, new, tied.get(name, []))


