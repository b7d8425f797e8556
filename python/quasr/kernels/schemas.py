"""The quasr ops, declared here whichever backend is built: schemas, fake (meta) implementations
for tracing and torch.compile, and the plain-torch reference as the CompositeExplicitAutograd
kernel, so `torch.ops.quasr.*` runs on any device. Backends register device kernels for these names
(csrc/cpu/ops.cpp: TORCH_LIBRARY_IMPL(quasr, CPU)); a device kernel takes precedence over the
reference on its device."""

from __future__ import annotations

import torch

from . import reference

_LIB = torch.library.Library("quasr", "DEF")
_LIB.define("qlinear(Tensor x, Tensor packed, Tensor scales, Tensor? zeros, Tensor? bias, int bits, int group_size, "
            "int in_features, int kernel=0, Tensor? input_mul=None, int act_bits=0, bool act_symmetric=False, "
            "float act_scale=0., float act_zero=0., bool act_group=False) -> Tensor")
_LIB.define("dequantize(Tensor packed, Tensor scales, Tensor? zeros, int bits, int group_size, int in_features) "
            "-> Tensor")
_LIB.define("rotate(Tensor x, Tensor? signs, int[] orders, Tensor?[] dense, float scale, int kernel=0) -> Tensor")
# Unmasked, non-causal attention with bf16 operands and float32 sums (reference.attention_bf16):
# q [B, H, Tq, D], k and v [B, H, Tk, D] -> [B, H, Tq, D]. The encoder self-attention of speech models.
_LIB.define("attention(Tensor q, Tensor k, Tensor v, float scale, int kernel=0) -> Tensor")


@torch.library.register_fake("quasr::qlinear")
def _qlinear_fake(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0, input_mul=None,
                  act_bits=0, act_symmetric=False, act_scale=0.0, act_zero=0.0, act_group=False):
    torch._check(x.shape[-1] == in_features)
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


@torch.library.register_fake("quasr::rotate")
def _rotate_fake(x, signs, orders, dense, scale, kernel=0):
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.register_fake("quasr::attention")
def _attention_fake(q, k, v, scale, kernel=0):
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d), dtype=torch.float32).transpose(1, 2)  # the CPU kernel's layout


@torch.library.register_fake("quasr::dequantize")
def _dequantize_fake(packed, scales, zeros, bits, group_size, in_features):
    return packed.new_empty((packed.shape[0], in_features), dtype=torch.float32)


_LIB.impl("qlinear", reference.qlinear_op, "CompositeExplicitAutograd")
_LIB.impl("dequantize", reference.dequantize_op, "CompositeExplicitAutograd")
_LIB.impl("rotate", reference.rotate_op, "CompositeExplicitAutograd")
_LIB.impl("attention", reference.attention_op, "CompositeExplicitAutograd")
