"""Size accounting: the bytes a model ships (every tensor once), its average weight bits, and the bytes
a layer's input transforms add beside its packed weight."""

from __future__ import annotations

from torch import nn

from ..nn import QuantConv1d, QuantLinear
from .schema import KEEP


def transform_bytes(spec: dict | str, in_features: int, out_features: int = 1, has_bias: bool = True) -> int:
    """Bytes the input transforms of a layer spec add beside its packed weight: the buffers
    nn._Packed.set_transforms allocates for it (measured on a meta-device module), plus the fp32
    bias a shift creates where the layer had none."""
    if spec == KEEP:
        return 0
    # the weight's bits and groups do not change the transforms: any valid ones will do
    m = QuantLinear(in_features, out_features, 8, -1, bias=has_bias, device="meta")
    m.set_transforms(rotate=spec.get("rotate", False), smooth=bool(spec.get("smooth")), act=spec, device="meta",
                     shift=bool(spec.get("shift")))
    created_bias = 0 if has_bias or m.bias is None else m.bias.numel() * m.bias.element_size()
    return m.transform_bytes() + created_bias


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of everything that ships: packed weights, scales/zeros, and every float tensor left,
    each shared tensor counted once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel()) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def average_bits(model: nn.Module) -> float:
    """Weight bits per original weight element over quantizable layers (float layers at their dtype)."""
    bits = elems = 0
    for _, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantConv1d)):
            n = m.packed.shape[0] * m.packed_in_features
            bits += m.bits * n
            elems += n
        elif isinstance(m, (nn.Linear, nn.Conv1d)):
            bits += m.weight.numel() * m.weight.element_size() * 8
            elems += m.weight.numel()
    return bits / max(elems, 1)
