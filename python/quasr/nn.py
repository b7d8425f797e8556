"""Modules that hold only packed weights and run on the quasr kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .format import PackedWeight, resolve_group_size


ACT_KEYS = ("act_bits", "act_granularity", "act_symmetric")


class RuntimeCache:
    """What a packed module derives from its buffers to run, held outside its state (never saved,
    never counted in the size): each repacking backend's runtime layout of the weight (one per
    grouped-conv slot), the static activation range as host floats, and the online rotation with its
    factors on the layer's device. Entries are tied to the buffer objects they came from: moving the
    module (`.to`) makes new buffers and so new entries on first use (or at `prepare_runtime`), and
    loading a state dict (which copies into the same buffers) clears them."""

    def __init__(self):
        self.entries: dict = {}

    def get(self, key, anchor: tuple, make):
        hit = self.entries.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], anchor)):  # a key's anchor has one length
            return hit[1]
        value = make()
        self.entries[key] = (anchor, value)
        return value

    def clear(self) -> None:
        self.entries.clear()

    def layout_bytes(self) -> int:
        """Bytes of the runtime layouts held (for `quasr info`; not part of the model size)."""
        total = 0
        for key, (_, value) in self.entries.items():
            if key[0] == "layout" and value is not None:
                total += sum(t.numel() * t.element_size() for t in vars(value).values() if isinstance(t, torch.Tensor))
        return total


def _clear_runtime(module, incompatible_keys) -> None:
    module._runtime.clear()
    module._bound = None  # its call holds a layout made from the old values


class _Packed(nn.Module):
    """Buffers of one packed [out, in] weight (+ optional float32 bias), and the optional transforms
    of its input, in the order they run: an online rotation (`rotation_signs`, plus
    `rotation_left`/`rotation_right` when it was learned: the stored weight is W M, see
    rotation.py), a per-channel shift (`input_shift`: OmniQuant's LET shift delta, subtracted; the
    bias holds b + W delta), a per-channel multiply (`input_mul`: SmoothQuant/AWQ/OmniQuant scales;
    the stored weight is W / input_mul), and activation fake-quant (`act_bits`, per token or per
    tensor with calibrated `act_qparams` = (scale, zero)). The last two run fused in the kernel."""

    TRANSFORM_BUFFERS = ("rotation_signs", "rotation_left", "rotation_right", "input_shift", "input_mul", "act_qparams")

    def _apply(self, fn, recurse=True):
        """`.to(device)` moves the buffers; `.half()`, `.to(torch.bfloat16)` and the like leave their
        dtypes alone. The scales and zeros are part of the packed format (float16), and the bias and
        transform buffers are what the layer was calibrated with: converting them would change the
        quantized model (bf16 scales lose bits). A packed layer's output follows its input's dtype.
        nn.Module routes every conversion through _apply, so this is the one place to keep them."""
        own = {id(t): t.dtype for t in self._buffers.values() if t is not None}

        def keep_dtype(t):
            out = fn(t)
            if id(t) in own and out.dtype != own[id(t)]:
                out = t.to(device=out.device)
            return out

        return super()._apply(keep_dtype, recurse)

    def transform_bytes(self) -> int:
        """Bytes of the input-transform buffers this layer holds beside its packed weight."""
        return sum(t.numel() * t.element_size() for t in (getattr(self, n) for n in self.TRANSFORM_BUFFERS)
                   if t is not None)

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
        self.register_buffer("rotation_signs", None)
        self.register_buffer("rotation_left", None)  # learned (SpinQuant) Kronecker factors of the rotation
        self.register_buffer("rotation_right", None)
        self.register_buffer("input_shift", None)
        self.register_buffer("input_mul", None)
        self.register_buffer("act_qparams", None)
        self.act_bits, self.act_granularity, self.act_symmetric = 0, "token", False
        self._runtime = RuntimeCache()
        self._bound = None  # (anchor, dispatch state, call) of ops.bound_qlinear
        self.register_load_state_dict_post_hook(_clear_runtime)

    def set_transforms(self, rotate: bool | str = False, smooth: bool = False, act: dict | None = None,
                       device=None, shift: bool = False) -> None:
        """Allocate the transform buffers a spec asks for (filled by a PTQ method or a checkpoint);
        rotate="learned" also allocates the learned rotation factors, shift a bias if there was none
        (it absorbs W delta)."""
        k = self.packed_in_features
        if shift:
            if getattr(self, "groups", 1) != 1:
                raise ValueError("an input shift on a grouped convolution is not supported (groups see different "
                                 "channels)")
            self.input_shift = torch.zeros(k, dtype=torch.float32, device=device)
            if self.bias is None:
                self.bias = torch.zeros(self.packed.shape[0], dtype=torch.float32, device=device)
        if rotate:
            self.rotation_signs = torch.ones(k, dtype=torch.int8, device=device)
        if rotate == "learned":
            from .rotation import rotation_factors

            a, b = rotation_factors(k)
            self.rotation_left = torch.eye(a, dtype=torch.float32, device=device)
            self.rotation_right = torch.eye(b, dtype=torch.float32, device=device)
        if smooth:
            self.input_mul = torch.ones(k, dtype=torch.float32, device=device)
        if act and act.get("act_bits"):
            self.act_bits = int(act["act_bits"])
            self.act_granularity = act.get("act_granularity", "token")
            self.act_symmetric = bool(act.get("act_symmetric", False))
            if self.act_granularity == "tensor":
                self.act_qparams = torch.zeros(2, dtype=torch.float32, device=device)

    def act_quant(self) -> ops.ActQuant | None:
        if not self.act_bits:
            return None
        if self.act_qparams is None:
            return ops.ActQuant(self.act_bits, self.act_symmetric, per_group=self.act_granularity == "group")
        # the range is read to the host once per buffer (a device sync on a GPU), not once per call
        return self._runtime.get(("act",), (self.act_qparams,), self._static_act_quant)

    def _static_act_quant(self) -> ops.ActQuant:
        scale, zero = self.act_qparams.tolist()
        if scale <= 0:
            raise RuntimeError("static activation ranges were never calibrated for this layer (act_qparams is zero)")
        return ops.ActQuant(self.act_bits, self.act_symmetric, scale, zero, qparams=self.act_qparams)

    def _act_or_none(self):
        try:
            return self.act_quant()
        except RuntimeError:  # not calibrated yet: the first call says so
            return None

    def rotation(self):
        """The layer's online rotation (rotation.Rotation), or None."""
        if self.rotation_signs is None:
            return None
        from .rotation import Rotation

        anchor = (self.rotation_signs, self.rotation_left, self.rotation_right)
        return self._runtime.get(("rotation",), anchor, lambda: Rotation(*anchor))

    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rotation()
        return x if r is None else r.apply(x).to(x.dtype)

    def _layouts(self, slot: int):
        """ops.qlinear's `layout_for`: a backend's runtime layout of this layer's weight (slot: the
        group of a grouped convolution), made on first use per buffer set and backend."""
        anchor = (self.packed, self.scales, self.zeros)

        def layout_for(backend, pw):
            return self._runtime.get(("layout", backend.name, slot), anchor, lambda: backend.repack(pw))

        return layout_for

    def _linear(self, x: torch.Tensor, pw: PackedWeight, bias, slot: int = 0) -> torch.Tensor:
        x = self.rotate_input(x)
        if self.input_shift is not None:
            x = x - self.input_shift.to(x.dtype)
        return ops.qlinear(x, pw, bias, input_mul=self.input_mul, act=self.act_quant(), layout_for=self._layouts(slot))

    def prepare_runtime(self) -> None:
        """Make now what the first call would: the static range, the rotation with its factors on
        this device, and the runtime layout of every available backend that repacks for this device
        (called after swap, load and `quasr.nn.prepare_runtime(model)`)."""
        from .kernels import BACKENDS

        rot = self.rotation()
        dev = self.packed.device
        if rot is not None:
            rot.device_factors(dev)
        act = self._act_or_none()
        for backend in BACKENDS.values():
            if (backend.repacks() and backend.needs_layout(act) and backend.available()
                    and backend.chosen_automatically(dev.type)):
                groups = getattr(self, "groups", 1)
                for g in range(groups):
                    pw = self._group_weight(g) if groups > 1 else self.packed_weight()
                    self._layouts(g)(backend, pw)

    def packed_weight(self) -> PackedWeight:
        return PackedWeight(self.packed, self.scales, self.zeros, self.bits, self.group_size, self.packed_in_features)

    def _load_packed(self, pw: PackedWeight, bias: torch.Tensor | None) -> None:
        pw.validate()
        self.packed, self.scales, self.zeros = pw.packed, pw.scales, pw.zeros
        if bias is not None:
            self.bias = bias.detach().to(torch.float32).clone()

    def spec(self) -> dict:
        spec = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        if self.act_bits:
            spec.update(act_bits=self.act_bits, act_granularity=self.act_granularity, act_symmetric=self.act_symmetric)
        if self.rotation_signs is not None:
            spec["rotate"] = "learned" if self.rotation_left is not None else True
        if self.input_mul is not None:
            spec["smooth"] = True
        if self.input_shift is not None:
            spec["shift"] = True
        return spec

    def dequantized_weight(self) -> torch.Tensor:
        """The stored weight, dequantized (with a rotation or smoothing, that is the transformed W)."""
        return ops.dequantize_weight(self.packed_weight())

    def _transform_repr(self) -> str:
        out = ""
        if self.rotation_signs is not None:
            out = ", rotated (learned)" if self.rotation_left is not None else ", rotated"
        out += ", shifted" if self.input_shift is not None else ""
        out += ", smoothed" if self.input_mul is not None else ""
        if self.act_bits:
            out += f", act={self.act_bits}b/{self.act_granularity}{'/sym' if self.act_symmetric else ''}"
        return out


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
        call = self._bound_call(x)
        if call is not None:
            return call(x)
        return self._linear(x, self.packed_weight(), self.bias)

    def _bound_call(self, x: torch.Tensor):
        """The kernel call with every argument but x bound (ops.bound_qlinear), for layers with
        dynamic int8 activations and no rotation or shift; None: take the full path."""
        b = self._buffers  # read directly: nn.Module's attribute lookup of a buffer costs a microsecond
        if (not self.act_bits or b["rotation_signs"] is not None or b["input_shift"] is not None
                or b["act_qparams"] is not None or x.shape[-1] != self.in_features or torch.compiler.is_compiling()):
            return None
        anchor = (b["packed"], b["scales"], b["zeros"], b["bias"], b["input_mul"], x.device)
        state = ops.dispatch_state()
        hit = self._bound
        if (hit is not None and hit[1] == state and hit[0][5] == anchor[5]
                and all(a is c for a, c in zip(hit[0][:5], anchor[:5]))):
            return hit[2]
        call = ops.bound_qlinear(self.packed_weight(), self.bias, self.input_mul, self.act_quant(), self._layouts(0),
                                 x.device)
        self._bound = (anchor, state, call)
        return call

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, bits={self.bits}, group={self.group_size}, "
                f"sym={self.symmetric}{self._transform_repr()}")


class QuantConv1d(_Packed):
    """Conv1d as im2col (unfold) + packed GEMM. The weight [out, in/groups, k] is packed as
    [out, in/groups*k]; a grouped convolution runs one GEMM per group on that group's rows (rows of
    the packed tensor are contiguous, so each group's slice is a view)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bits=4, group_size=128,
                 symmetric=False, bias=True, device=None, groups=1):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        # tuples, as nn.Conv1d has them (transformers reads conv.stride[0])
        self.kernel_size, self.stride, self.padding = (kernel_size,), (stride,), (padding,)
        self._init_packed(out_channels, in_channels // groups * kernel_size, bits, group_size, symmetric, bias, device)

    @staticmethod
    def check_supported(conv: nn.Conv1d) -> None:
        problems = []
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
                pw.bits, pw.group_size, pw.symmetric, conv.bias is not None, "meta", groups=conv.groups)
        if pw.in_features != m.packed_in_features:
            raise ValueError(f"packed weight has K={pw.in_features}, the conv needs {m.packed_in_features}")
        m._load_packed(pw, conv.bias)
        return m

    def _group_weight(self, g: int) -> PackedWeight:
        if self.groups == 1:
            return self.packed_weight()
        rows = slice(g * self.out_channels // self.groups, (g + 1) * self.out_channels // self.groups)
        return PackedWeight(self.packed[rows], self.scales[rows], None if self.zeros is None else self.zeros[rows],
                            self.bits, self.group_size, self.packed_in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding[0]:
            x = F.pad(x, (self.padding[0], self.padding[0]))
        k, s = self.kernel_size[0], self.stride[0]
        outs = []
        # one group at a time keeps the unfolded columns small (Wav2Vec2's positional conv has k=128)
        for g, xg in enumerate(x.chunk(self.groups, dim=1)):
            cols = xg.unfold(2, k, s)  # [B, Cin/groups, T_out, k]
            b, cin, t, _ = cols.shape
            cols = cols.permute(0, 2, 1, 3).reshape(b, t, cin * k)
            outs.append(self._linear(cols, self._group_weight(g), self.bias if self.groups == 1 else None, slot=g))
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        if self.bias is not None and self.groups > 1:
            y = y + self.bias.to(y.dtype)
        return y.transpose(1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size[0]}, s={self.stride[0]}, p={self.padding[0]}, "
                f"groups={self.groups}, bits={self.bits}, group={self.group_size}, sym={self.symmetric}"
                f"{self._transform_repr()}")


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


def prepare_runtime(model: nn.Module) -> nn.Module:
    """Build every packed layer's runtime state for the device it is on now (after `model.to(...)`):
    backend layouts, rotation factors on the device, static ranges on the host. Optional (the first
    call builds what is missing) but keeps that work, and its one device sync per static range, out
    of the first decoding step. A quantized transformers model also gets quasr's attention where it
    applies (integrations/attention.py; QUASR_ATTENTION=exact keeps torch's)."""
    packed = [m for m in model.modules() if isinstance(m, _Packed)]
    for module in packed:
        module.prepare_runtime()
    if packed:
        from .integrations import attention

        attention.enable(model)
    return model
