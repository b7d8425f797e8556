"""The layout seam: a backend may keep its own runtime layout of a packed weight, made once per
weight and device, held outside the module's state. Size accounting and saved bytes never see it,
outputs match the reference, and nothing derived from the buffers is rebuilt (or copied to the
device) per call."""

from dataclasses import dataclass

import pytest
import torch

from conftest import tiny_family
from quasr import ops
from quasr.format import dequantize
from quasr.kernels import BACKENDS, dispatch, forced, reference
from quasr.kernels.registry import Reference
from quasr.nn import QuantConv1d, QuantLinear, _Packed, prepare_runtime
from quasr.plan import model_size_bytes, swap, uniform_plan
from quasr.quantize import rtn_quantize
from quasr.serialize import load_quantized, save_quantized


@dataclass
class ProbeLayout:
    weight_t: torch.Tensor  # [K, N] float32: a layout unlike the canonical one


class RepackingProbe(Reference):
    """A backend that repacks (the dequantized weight, transposed) and counts how often."""

    name = "probe"
    description = "test backend with a runtime layout"

    def __init__(self):
        self.repacked, self.calls = 0, 0

    @property
    def paths(self):
        return ("probe",)

    def repacks(self):
        return True

    def repack(self, pw):
        self.repacked += 1
        return ProbeLayout(dequantize(pw).T.contiguous())

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        self.calls += 1
        assert layout is not None, "a packed module must hand its cached layout to the backend"
        y = reference.input_transform(x, input_mul, act) @ layout.weight_t
        return (y if bias is None else y + bias.float()).to(x.dtype)


@pytest.fixture
def probe(monkeypatch):
    backend = RepackingProbe()
    monkeypatch.setitem(BACKENDS, "probe", backend)
    monkeypatch.delenv("QUASR_KERNEL", raising=False)
    for cache in (dispatch._choose, dispatch._backend_for):
        cache.cache_clear()
    yield backend
    for cache in (dispatch._choose, dispatch._backend_for):
        cache.cache_clear()


def _state_bytes(model) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b""
            for k, v in model.state_dict().items()}


def _mixed_plan(model):
    plan = uniform_plan(model, 4, 32)
    layers = plan["layers"]
    for i, name in enumerate(sorted(n for n, s in layers.items() if isinstance(s, dict))):
        layers[name] = dict(layers[name], bits=(2, 3, 5, 8)[i % 4])
    return plan


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
def test_repack_changes_neither_size_nor_saved_bytes_and_matches_the_reference(family, probe, tmp_path):
    model, processor = tiny_family(family)
    swap(model, _mixed_plan(model), progress=False)
    packed = [m for m in model.modules() if isinstance(m, _Packed)]
    size, state = model_size_bytes(model), _state_bytes(model)
    save_quantized(model, processor, tmp_path / "before")

    prepare_runtime(model)
    grouped = sum(getattr(m, "groups", 1) for m in packed)
    assert probe.repacked == grouped  # one layout per weight (per group of a grouped conv)
    assert sum(m._runtime.layout_bytes() for m in packed) > 0
    assert model_size_bytes(model) == size
    assert _state_bytes(model) == state
    save_quantized(model, processor, tmp_path / "after")
    for f in ("model.safetensors", "quasr_plan.json"):
        assert (tmp_path / "before" / f).read_bytes() == (tmp_path / "after" / f).read_bytes(), f

    for m in packed:  # every layer's output through the probe's layout equals the reference's
        k = m.packed_in_features
        x = torch.randn(3, k, generator=torch.Generator().manual_seed(k))
        pw = m.packed_weight() if getattr(m, "groups", 1) == 1 else m._group_weight(0)
        want = reference.qlinear(x, pw, m.bias if getattr(m, "groups", 1) == 1 else None, m.input_mul, m.act_quant())
        with forced("probe"):
            got = m._linear(x, pw, m.bias if getattr(m, "groups", 1) == 1 else None)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert probe.repacked == grouped  # the calls reused the layouts


def test_layout_is_made_once_and_follows_the_buffers(probe, tmp_path):
    lin = torch.nn.Linear(64, 24)
    q = QuantLinear.from_float(lin, rtn_quantize(lin.weight, 3, 32))
    x = torch.randn(2, 64)
    other = QuantLinear.from_float(torch.nn.Linear(64, 24), rtn_quantize(torch.randn(24, 64), 3, 32))
    other_out = other(x)  # native kernels: the probe is not involved
    with forced("probe"):
        first = q(x)
        for _ in range(4):
            torch.testing.assert_close(q(x), first)
        assert (probe.repacked, probe.calls) == (1, 5)

        q.to(torch.device("cpu"))  # same device: no new buffers, the layout stays
        q(x)
        assert probe.repacked == 1

        q.load_state_dict(other.state_dict())  # copies into the same buffers: the layout must not go stale
        torch.testing.assert_close(q(x), other_out, rtol=1e-5, atol=1e-5)
        assert probe.repacked == 2

        q._load_packed(rtn_quantize(lin.weight, 3, 32), lin.bias)  # new buffer objects
        torch.testing.assert_close(q(x), first)
        assert probe.repacked == 3


def test_grouped_conv_keeps_one_layout_per_group(probe):
    conv = torch.nn.Conv1d(32, 48, 5, padding=2, groups=4)
    q = QuantConv1d.from_float(conv, rtn_quantize(conv.weight.reshape(48, -1), 4, 32))
    x = torch.randn(1, 32, 20)
    want = q(x)
    with forced("probe"):
        torch.testing.assert_close(q(x), want, rtol=1e-5, atol=1e-5)
        q(x)
    assert probe.repacked == 4


def test_a_loaded_checkpoint_is_prepared_and_its_layouts_are_not_saved(probe, tmp_path):
    model, processor = tiny_family("whisper")
    swap(model, uniform_plan(model, 4, 32), progress=False)
    save_quantized(model, processor, tmp_path / "q")
    loaded, _ = load_quantized(tmp_path / "q")
    prepare_runtime(loaded)
    assert probe.repacked > 0
    save_quantized(loaded, processor, tmp_path / "again")
    assert (tmp_path / "q" / "model.safetensors").read_bytes() == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_static_range_is_read_to_the_host_once_not_per_call(monkeypatch):
    lin = torch.nn.Linear(64, 8)
    q = QuantLinear.from_float(lin, rtn_quantize(lin.weight, 4, 32))
    q.set_transforms(act={"act_bits": 8, "act_granularity": "tensor"})
    q.act_qparams = torch.tensor([0.02, 128.0])
    reads = []
    real = q._static_act_quant
    monkeypatch.setattr(q, "_static_act_quant", lambda: reads.append(1) or real())
    x = torch.randn(2, 64)
    outs = [q(x) for _ in range(3)]
    assert len(reads) == 1
    assert q.act_quant().qparams is q.act_qparams  # kernels that want it on the device read the buffer itself
    want = reference.qlinear(x, q.packed_weight(), q.bias, None, ops.ActQuant(8, False, 0.02, 128.0))
    torch.testing.assert_close(outs[-1], want, rtol=1e-5, atol=1e-5)
    q.act_qparams = torch.tensor([0.04, 128.0])  # a new range is read again
    q(x)
    assert len(reads) == 2


def test_rotation_factors_move_to_a_device_once(monkeypatch):
    from quasr.rotation import Rotation, random_signs

    rot = Rotation(random_signs(384, 0))
    moves = []
    real = rot.native_factors
    monkeypatch.setattr(rot, "native_factors", lambda: moves.append(1) or real())
    x = torch.randn(4, 384)
    for _ in range(3):
        y = rot.apply(x)
    assert len(moves) == 1
    torch.testing.assert_close(y, rot.reference_apply(x), rtol=1e-5, atol=1e-5)
    signs, orders, dense, _ = rot.device_factors("cpu")
    assert rot.device_factors("cpu")[2] is dense  # cached, not rebuilt


def test_the_layer_caches_its_rotation():
    lin = torch.nn.Linear(384, 8)
    q = QuantLinear.from_float(lin, rtn_quantize(lin.weight, 4, 128))
    q.set_transforms(rotate=True)
    q.rotation_signs = torch.ones(384, dtype=torch.int8)
    assert q.rotation() is q.rotation()
    q.rotation_signs = -torch.ones(384, dtype=torch.int8)  # new buffer: a new rotation
    r = q.rotation()
    assert r.signs is q.rotation_signs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_dtype_conversion_leaves_the_packed_state_alone(dtype):
    """model.half() / .to(torch.bfloat16) converts the float layers; packed layers keep their exact
    quantized state (fp16 scales would lose bits as bf16) and follow their input's dtype."""
    model, _ = tiny_family("whisper")
    swap(model, _mixed_plan(model), progress=False)
    before = _state_bytes(model)
    packed = [n for n, m in model.named_modules() if isinstance(m, _Packed)]
    model.to(dtype)
    after = _state_bytes(model)
    assert all(after[k] == v for k, v in before.items() if k.rsplit(".", 1)[0] in packed)
    m = next(m for m in model.modules() if isinstance(m, QuantLinear) and m.bias is not None)
    x = torch.randn(2, m.in_features).to(dtype)
    want = reference.qlinear(x.float(), m.packed_weight(), m.bias)
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want, rtol=0.02, atol=0.02 * float(want.abs().max()))
    assert m.scales.dtype == torch.float16 and m.bias.dtype == torch.float32
