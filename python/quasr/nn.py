"""Modules that hold only packed weights and run on the quasr kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .format import PackedWeight, resolve_group_size


class _Packed(nn.Module):
    """Buffers of one packed [out, in] weight (+ optional float32 bias)."""

    def _init_packed(self, out_features, in_features, bits, group_size, symmetric, bias, device=None):
        g, padded = resolve_group_size(group_size, in_features)
        self.bits, self.group_size, self.symmetric = bits, g, symmetric
        self.packed_in_features = in_features
        groups = padded // g
        self.register_buffer("packed", torch.empty(out_features, padded * bits // 8, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.empty(out_features, groups, dtype=torch.float16, device=device))
        self.register_buffer(
            "zeros", None if symmetric else torch.empty(out_features, groups, dtype=torch.float16, device=device)
        )
        self.register_buffer("bias", torch.empty(out_features, device=device) if bias else None)

    def packed_weight(self) -> PackedWeight:
        return PackedWeight(self.packed, self.scales, self.zeros, self.bits, self.group_size, self.packed_in_features)

    def _load_packed(self, pw: PackedWeight, bias: torch.Tensor | None) -> None:
        pw.validate()
        self.packed, self.scales, self.zeros = pw.packed, pw.scales, pw.zeros
        if bias is not None:
            self.bias = bias.detach().to(torch.float32).clone()

    def spec(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}

    def dequantized_weight(self) -> torch.Tensor:
        return ops.dequantize_weight(self.packed_weight())


class QuantLinear(_Packed):
    def __init__(self, in_features, out_features, bits, group_size=128, symmetric=False, bias=True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_packed(out_features, in_features, bits, group_size, symmetric, bias, device)

    @classmethod
    def from_float(cls, linear: nn.Linear, pw: PackedWeight) -> "QuantLinear":
        if tuple(pw.packed.shape[:1]) != (linear.out_features,) or pw.in_features != linear.in_features:
            raise ValueError("packed weight does not match the layer's shape")
        m = cls(linear.in_features, linear.out_features, pw.bits, pw.group_size, pw.symmetric, linear.bias is not None, "meta")
        m._load_packed(pw, linear.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.qlinear(x, self.packed_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, sym={self.symmetric}"


class QuantConv1d(_Packed):
    """Conv1d as im2col (unfold) + packed GEMM. The weight [out, in, k] is packed as [out, in*k]."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bits=4, group_size=128,
                 symmetric=False, bias=True, device=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        # tuples, as nn.Conv1d has them (transformers reads conv.stride[0])
        self.kernel_size, self.stride, self.padding = (kernel_size,), (stride,), (padding,)
        self._init_packed(out_channels, in_channels * kernel_size, bits, group_size, symmetric, bias, device)

    @staticmethod
    def check_supported(conv: nn.Conv1d) -> None:
        problems = []
        if conv.groups != 1:
            problems.append(f"groups={conv.groups}")
        if conv.dilation[0] != 1:
            problems.append(f"dilation={conv.dilation[0]}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            problems.append(f"padding={conv.padding!r}/{conv.padding_mode}")
        if problems:
            raise ValueError(f"QuantConv1d does not support {', '.join(problems)}: keep this layer in float")

    @classmethod
    def from_float(cls, conv: nn.Conv1d, pw: PackedWeight) -> "QuantConv1d":
        cls.check_supported(conv)
        m = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0],
                pw.bits, pw.group_size, pw.symmetric, conv.bias is not None, "meta")
        m._load_packed(pw, conv.bias)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding[0]:
            x = F.pad(x, (self.padding[0], self.padding[0]))
        cols = x.unfold(2, self.kernel_size[0], self.stride[0])  # [B, Cin, T_out, k]
        b, cin, t, k = cols.shape
        cols = cols.permute(0, 2, 1, 3).reshape(b, t, cin * k)
        return ops.qlinear(cols, self.packed_weight(), self.bias).transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size[0]}, s={self.stride[0]}, p={self.padding[0]}, "
                f"bits={self.bits}, group={self.group_size}, sym={self.symmetric}")


class QuantTiedEmbedding(nn.Module):
    """An embedding whose table is the packed weight of a tied QuantLinear (e.g. Whisper's
    decoder.embed_tokens tied to proj_out): looked-up rows are gathered from the packed rows and
    dequantized, so the table is stored once, at the output projection's bits."""

    def __init__(self, source: QuantLinear, padding_idx=None, embed_scale: float | None = None):
        super().__init__()
        object.__setattr__(self, "source", source)  # not a submodule: its buffers are saved once
        self.num_embeddings, self.embedding_dim = source.out_features, source.in_features
        self.padding_idx = padding_idx
        self.embed_scale = embed_scale

    @property
    def weight(self) -> torch.Tensor:  # for code that reads .weight (dtype/device/shape)
        return self.source.dequantized_weight()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        src = self.source
        flat = ids.reshape(-1)
        pw = PackedWeight(src.packed[flat], src.scales[flat], None if src.zeros is None else src.zeros[flat],
                          src.bits, src.group_size, src.packed_in_features)
        out = ops.dequantize_weight(pw).view(*ids.shape, self.embedding_dim)
        return out * self.embed_scale if self.embed_scale not in (None, 1.0) else out
