"""quasr's packed layers as ONNX Runtime computes them: `MatMulNBits` (com.microsoft) weights made
from quasr's codes, and the layers' input transforms in plain torch ops, so that `torch.onnx.export`
writes each quantized layer as its transforms followed by one `MatMulNBits` node.

MatMulNBits computes A @ dequant(B).T with  w = (q - zero_point) * scale  per block of `block_size`
weights along K, the codes q packed little-endian (low bits first), on the CPU for 2, 4 and 8 bits,
with integer zero points (uint8, packed like the codes) or, for 2 and 4 bits, float zero points.
quasr's format is the same formula (format.py), with groups of 32·j along K, so:

    quasr bits   ->  MatMulNBits bits       quasr group g  ->  block_size: g when a power of two,
    2            ->  2                       else the largest power of two dividing g, each group's
    3, 4         ->  4                       scale and zero repeated over its blocks (exact)
    5, 6, 7, 8   ->  8
    zero points: symmetric layers keep their constant zero 2**(bits-1) (omitted when it is
    MatMulNBits' default); integer zeros go in as uint8; fractional zeros (HQQ, ...) in as float
    for 2/4 bits; an 8-bit layer with fractional zeros has no exact MatMulNBits form and becomes a
    float MatMul of its dequantized weight (reported, with the bytes it costs).

Widening 3 -> 4 and 5..7 -> 8 bits keeps every code, so it is exact; it costs the extra bits,
reported per layer. Input transforms run as nodes before the product, exactly as quasr runs them:
the online rotation (QuaRot/SpinQuant: sign flip and two small MatMuls on the [a, b] view), the
OmniQuant shift (Sub), the smoothing multiply (Mul) and the activation fake-quant. Layers that
quasr runs with int8 activations get MatMulNBits' accuracy_level 4 by default (ORT's int8 kernel on
the already-quantized input); the others accuracy_level 0 (float), which reproduces quasr's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..format import PackedWeight, unpack_codes
from ..kernels.reference import ActQuant, input_transform

ORT_BITS = {2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 7: 8, 8: 8}
ACCURACY_LEVELS = ("auto", 0, 1, 2, 3, 4)


class OnnxExportError(ValueError):
    pass


# -- the op the exporter translates to MatMulNBits --------------------------------------------------
@torch.library.custom_op("quasr_onnx::matmul_nbits", mutates_args=())
def matmul_nbits(x: torch.Tensor, b: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None,
                 bias: torch.Tensor | None, k: int, n: int, bits: int, block_size: int,
                 accuracy_level: int) -> torch.Tensor:
    """MatMulNBits' float result, computed in plain torch from its own inputs (for eager runs and
    tests; the exported graph holds the ORT node)."""
    w = ort_dequantize(b, scales, zero_points, k, n, bits, block_size)
    y = x.to(torch.float32) @ w.T
    return y + bias if bias is not None else y


@matmul_nbits.register_fake
def _(x, b, scales, zero_points, bias, k, n, bits, block_size, accuracy_level):
    return x.new_empty((*x.shape[:-1], n), dtype=torch.float32)


def _matmul_nbits_schema():
    """ORT's MatMulNBits signature (onnxruntime/core/graph/contrib_ops/contrib_defs): onnx's registry has
    no contrib ops, and the exporter builds nodes from a schema."""
    from onnx.defs import OpSchema

    param, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    attr = OpSchema.AttrType.INT
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"), param("zero_points", "T3", param_option=optional),
                param("g_idx", "T4", param_option=optional), param("bias", "T1", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("T4", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute(name, attr, "") for name in ("K", "N", "bits", "block_size", "accuracy_level")],
    )


def translation_table() -> dict:
    """torch.onnx.export's custom_translation_table: quasr_onnx::matmul_nbits -> com.microsoft MatMulNBits."""
    import onnxscript

    node = onnxscript.values.Op(onnxscript.values.Opset("com.microsoft", 1), "MatMulNBits", _matmul_nbits_schema())

    def matmul_nbits_onnx(x, b, scales, zero_points, bias, k: int, n: int, bits: int, block_size: int,
                          accuracy_level: int):
        return node(x, b, scales, zero_points, None, bias, K=k, N=n, bits=bits, block_size=block_size,
                    accuracy_level=accuracy_level)

    return {torch.ops.quasr_onnx.matmul_nbits.default: matmul_nbits_onnx}


# -- weights in MatMulNBits' layout --------------------------------------------------------------------
def _pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int [N, M] codes < 2**bits (M a multiple of 8 // bits) -> uint8 [N, M * bits // 8], low bits first."""
    per = 8 // bits
    c = codes.to(torch.int32).reshape(codes.shape[0], -1, per)
    out = torch.zeros(c.shape[:2], dtype=torch.int32)
    for i in range(per):
        out |= c[..., i] << (i * bits)
    return out.to(torch.uint8)


def _unpack_rows(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """uint8 [..., bytes] -> float32 [..., count] codes, in ops every exporter has (floor div, mod)."""
    if bits == 8:
        return packed.to(torch.float32)[..., :count]
    per = 8 // bits
    p = packed.to(torch.int32).unsqueeze(-1)
    shifts = torch.tensor([2 ** (i * bits) for i in range(per)], dtype=torch.int32, device=packed.device)
    codes = torch.remainder(torch.div(p, shifts, rounding_mode="floor"), 2 ** bits)
    return codes.reshape(*packed.shape[:-1], -1)[..., :count].to(torch.float32)


def block_size_for(group_size: int) -> int:
    """The MatMulNBits block for a quasr group: the group itself when a power of two, else the largest
    power of two dividing it (groups are multiples of 32)."""
    return group_size & -group_size


@dataclass
class OrtWeight:
    """One layer's MatMulNBits inputs and attributes (or a float weight where none is exact)."""

    b: torch.Tensor | None  # uint8 [N, k_blocks, block_size * bits // 8]
    scales: torch.Tensor | None  # float32 [N * k_blocks]
    zero_points: torch.Tensor | None  # uint8 [N * ceil(k_blocks * bits / 8)] or float32 [N * k_blocks] or None
    k: int
    n: int
    bits: int  # MatMulNBits bits; 0: float weight
    block_size: int
    float_weight: torch.Tensor | None = None  # [N, K] where no exact MatMulNBits form exists
    note: str = ""


def ort_weight(pw: PackedWeight) -> OrtWeight:
    """quasr's packed weight as MatMulNBits inputs, exactly (see the module docstring)."""
    n, k = pw.out_features, pw.in_features
    bits, g = ORT_BITS[pw.bits], pw.group_size
    block = block_size_for(g)
    k_blocks = -(-k // block)
    codes = unpack_codes(pw.packed, pw.bits)[:, : k_blocks * block]
    repeat = g // block
    scales = pw.scales.to(torch.float32).repeat_interleave(repeat, 1)[:, :k_blocks]
    note = f"{pw.bits}-bit stored as {bits}-bit (exact)" if bits != pw.bits else ""
    if pw.zeros is None:
        zero = float(2 ** (pw.bits - 1))
        zeros = None if pw.bits == bits else torch.full((n, k_blocks), zero)
    else:
        zeros = pw.zeros.to(torch.float32).repeat_interleave(repeat, 1)[:, :k_blocks]
    fractional = zeros is not None and bool((zeros != zeros.round()).any() or (zeros < 0).any()
                                            or (zeros > 2 ** bits - 1).any())
    if fractional and bits == 8:
        from ..ops import dequantize_weight

        w = dequantize_weight(pw).to(torch.float32)[:, :k].contiguous()
        return OrtWeight(None, None, None, k, n, 0, block, float_weight=w,
                         note=f"{pw.bits}-bit with fractional zero points: MatMulNBits holds 8-bit codes with integer "
                              f"zero points only, so this layer is a float MatMul of its dequantized weight (exact)")
    b = _pack_rows(codes, bits).reshape(n, k_blocks, block * bits // 8)
    if zeros is None:
        zp = None
    elif fractional:
        zp = zeros.reshape(-1).contiguous()
        note = (note + "; " if note else "") + "fractional zero points stored as float (ORT's float path)"
    else:
        per_row = -(-k_blocks * bits // 8) * (8 // bits)
        padded = torch.zeros(n, per_row, dtype=torch.int32)
        padded[:, :k_blocks] = zeros.to(torch.int32)
        zp = _pack_rows(padded, bits).reshape(-1)
    return OrtWeight(b.contiguous(), scales.reshape(-1).contiguous(), zp, k, n, bits, block, note=note)


def _dequantize_blocks(b, scales, zero_points, k: int, bits: int, block_size: int) -> torch.Tensor:
    """[..., K] float32 rows from MatMulNBits rows: b [..., k_blocks, blob], scales [..., k_blocks],
    zero_points [..., bytes] (uint8) or [..., k_blocks] (float) or None (the default 2**(bits-1))."""
    k_blocks = b.shape[-2]
    codes = _unpack_rows(b, bits, block_size)  # [..., k_blocks, block]
    if zero_points is None:
        z = torch.full((), float(2 ** (bits - 1)))
    elif zero_points.dtype == torch.uint8:
        z = _unpack_rows(zero_points, bits, k_blocks).unsqueeze(-1)
    else:
        z = zero_points.to(torch.float32).unsqueeze(-1)
    return ((codes - z) * scales.unsqueeze(-1)).reshape(*b.shape[:-2], -1)[..., :k]


def ort_dequantize(b, scales, zero_points, k: int, n: int, bits: int, block_size: int) -> torch.Tensor:
    """float32 [N, K] weight from MatMulNBits inputs (the reference the exported node is checked against)."""
    zp = None if zero_points is None else zero_points.reshape(n, -1)
    return _dequantize_blocks(b, scales.reshape(n, -1), zp, k, bits, block_size)


# -- modules ---------------------------------------------------------------------------------------------
class OrtLinear(nn.Module):
    """A quasr packed [N, K] product as ORT runs it: the input transforms, then MatMulNBits."""

    def __init__(self, layer, pw: PackedWeight, bias: torch.Tensor | None, accuracy_level="auto"):
        super().__init__()
        w = ort_weight(pw)
        self.k, self.n, self.bits, self.block_size, self.note = w.k, w.n, w.bits, w.block_size, w.note
        self.quasr_bits, self.group_size = pw.bits, pw.group_size
        act = layer.act_quant()
        self.act = None if act is None else ActQuant(act.bits, act.symmetric, act.scale, act.zero,
                                                     per_group=act.per_group)
        if accuracy_level not in ACCURACY_LEVELS:
            raise OnnxExportError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level!r}")
        self.accuracy_level = (4 if self.act is not None and self.act.bits == 8 else 0) if accuracy_level == "auto" \
            else int(accuracy_level)
        for name in ("b", "scales", "zero_points", "float_weight"):
            self.register_buffer(name, getattr(w, name))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).clone())
        self.register_buffer("input_shift", None if layer.input_shift is None else layer.input_shift.float().clone())
        self.register_buffer("input_mul", None if layer.input_mul is None else layer.input_mul.float().clone())
        rot = layer.rotation()
        self.rotation_size = None
        if rot is not None:
            left, right = rot.factors("cpu")
            self.register_buffer("rotation_signs", rot.signs.to(torch.float32).clone())
            self.register_buffer("rotation_left", left.clone())
            self.register_buffer("rotation_right", right.clone())
            self.rotation_size = (rot.a, rot.b)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers())

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.rotation_size is not None:
            a, b = self.rotation_size
            xs = (x * self.rotation_signs).reshape(*x.shape[:-1], a, b)
            x = (self.rotation_left.T @ xs @ self.rotation_right).reshape(x.shape)  # x (L kron R)
        if self.input_shift is not None:
            x = x - self.input_shift
        return input_transform(x, self.input_mul, self.act, self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform(x)
        if self.bits == 0:
            y = x @ self.float_weight.T
            return y + self.bias if self.bias is not None else y
        return matmul_nbits(x, self.b, self.scales, self.zero_points, self.bias, self.k, self.n, self.bits,
                            self.block_size, self.accuracy_level)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows `ids` of the weight ([..., K]): a tied embedding's lookup, in graph ops
        (gathered before they are unpacked, so a step decodes only its own rows)."""
        if self.bits == 0:
            return self.float_weight[ids]
        zp = None if self.zero_points is None else self.zero_points.reshape(self.n, -1)[ids]
        return _dequantize_blocks(self.b[ids], self.scales.reshape(self.n, -1)[ids], zp, self.k, self.bits,
                                  self.block_size)

    def extra_repr(self) -> str:
        return (f"K={self.k}, N={self.n}, bits={self.bits} (quasr {self.quasr_bits}), block={self.block_size}, "
                f"accuracy_level={self.accuracy_level}")


class OrtConv1d(nn.Module):
    """A quasr packed Conv1d as ORT runs it: im2col from strided slices (one per kernel tap), then one
    OrtLinear per group (the same column order as QuantConv1d: channel-major, tap-minor)."""

    def __init__(self, conv, accuracy_level="auto"):
        super().__init__()
        # tuples, as nn.Conv1d has them (transformers reads conv.stride[0])
        self.kernel_size, self.stride, self.padding, self.groups = conv.kernel_size, conv.stride, conv.padding, conv.groups
        bias = conv.bias if conv.groups == 1 else None
        self.parts = nn.ModuleList(OrtLinear(conv, conv._group_weight(g), bias, accuracy_level) for g in range(conv.groups))
        self.register_buffer("bias", None if conv.groups == 1 or conv.bias is None else conv.bias.float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.padding[0]:
            x = nn.functional.pad(x, (self.padding[0], self.padding[0]))
        k, s = self.kernel_size[0], self.stride[0]
        t_out = (x.shape[-1] - k) // s + 1
        outs = []
        for part, xg in zip(self.parts, x.chunk(self.groups, dim=1)):
            taps = [xg[..., j: j + s * (t_out - 1) + 1: s] for j in range(k)]  # each [B, C, T_out]
            cols = torch.stack(taps, -1).permute(0, 2, 1, 3)  # [B, T_out, C, k]
            outs.append(part(cols.reshape(cols.shape[0], t_out, -1)))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
        if self.bias is not None:
            y = y + self.bias
        return y.transpose(1, 2)


class OrtTiedEmbedding(nn.Module):
    """An embedding tied to a quantized output projection: rows gathered from its MatMulNBits weight
    and dequantized in the graph, so the table is stored once."""

    def __init__(self, source: OrtLinear, embed_scale):
        super().__init__()
        object.__setattr__(self, "source", source)  # not a submodule: its buffers are exported once
        self.embed_scale = embed_scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.source.rows(ids)
        return out * self.embed_scale if self.embed_scale not in (None, 1.0) else out


def to_ort_modules(model: nn.Module, accuracy_level="auto") -> dict[str, OrtLinear | OrtConv1d]:
    """Replace, in place, every quasr packed module of `model` by its ORT form; returns them by name."""
    from ..nn import QuantConv1d, QuantLinear, QuantTiedEmbedding

    done, by_source = {}, {}
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            new = OrtLinear(module, module.packed_weight(), module.bias, accuracy_level)
            by_source[id(module)] = new
        elif isinstance(module, QuantConv1d):
            new = OrtConv1d(module, accuracy_level)
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
        done[name] = new
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantTiedEmbedding):
            source = by_source.get(id(module.source))
            if source is None:
                raise OnnxExportError(f"{name} is tied to a packed layer that is not part of the model")
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, OrtTiedEmbedding(source, module.embed_scale))
    return done


def layer_report(modules: dict) -> list[tuple[str, int, int, int, str]]:
    """(name, quasr bits, MatMulNBits bits or 0 for float, bytes, note) per exported layer."""
    rows = []
    for name, m in modules.items():
        parts = m.parts if isinstance(m, OrtConv1d) else [m]
        rows.append((name, parts[0].quasr_bits, parts[0].bits, sum(p.nbytes() for p in parts),
                     "; ".join(sorted({p.note for p in parts if p.note}))))
    return rows

