"""The Triton backend behind the dispatcher and the packed modules: layers of every width, sym and
asym, Linear and grouped Conv1d, with every transform (rotation, input multiply, activation
fake-quant), through `forced("triton")`, run by the Triton interpreter on the CPU
(tests/conftest.py sets TRITON_INTERPRET=1 where there is no GPU; whole models are too slow to
interpret). Whole mixed-precision models on a GPU: tests/test_cuda_triton.py."""

import pytest
import torch

pytest.importorskip("triton")

from quasr.kernels import BACKENDS, choose, forced  # noqa: E402

TRITON = BACKENDS["triton"]
pytestmark = pytest.mark.skipif(not TRITON.available(), reason=f"Triton backend unavailable: {TRITON.status()}")


def test_on_the_cpu_the_interpreter_is_chosen_only_when_forced():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the Triton kernels run compiled")
    assert choose("cpu", 4, 128, 1, 512, 512).backend != "triton"
    with forced("triton"):
        assert choose("cpu", 4, 128, 1, 512, 512).backend == "triton"


def _layers(transforms: bool):
    """Packed layers at every width, as a model holds them: Linear (sym and asym, g32/g64/per-channel)
    and a grouped Conv1d, optionally with rotation, input multiply and activation fake-quant."""
    from quasr.nn import QuantConv1d, QuantLinear
    from quasr.quantize import rtn_quantize

    torch.manual_seed(0)
    out = []
    for bits, (k, n), group in zip(range(2, 9), [(64, 48), (96, 40), (128, 64), (64, 64), (96, 32), (128, 40),
                                                 (64, 24)], [32, 64, -1, 32, 64, 32, -1]):
        lin = torch.nn.Linear(k, n)
        q = QuantLinear.from_float(lin, rtn_quantize(lin.weight, bits, group, symmetric=bits % 2 == 1))
        if transforms:
            act = {"act_bits": 8 if bits > 4 else 4, "act_granularity": "tensor" if bits % 2 else "token"}
            q.set_transforms(rotate=True, smooth=True, act=act)
            q.rotation_signs = torch.randint(0, 2, (k,), dtype=torch.int8) * 2 - 1
            q.input_mul = torch.rand(k) + 0.5
            if q.act_qparams is not None:
                q.act_qparams = torch.tensor([0.05, 128.0 if act["act_bits"] == 8 else 8.0])
        out.append(q)
    conv = torch.nn.Conv1d(32, 48, 3, padding=1, groups=2)
    out.append(QuantConv1d.from_float(conv, rtn_quantize(conv.weight.reshape(48, -1), 5, 32)))
    return out


@pytest.mark.parametrize("transforms", [False, True])
def test_packed_layers_of_every_width_on_triton_match_the_cpu_kernels(transforms):
    from quasr.nn import QuantConv1d

    gen = torch.Generator().manual_seed(1)
    for layer in _layers(transforms):
        for m in (1, 5, 33):
            if isinstance(layer, QuantConv1d):
                x = torch.randn(1, 32, m, generator=gen)
            else:
                x = torch.randn(m, layer.in_features, generator=gen)
            want = layer(x)
            with forced("triton"):
                got = layer(x)
            # activation fake-quant: the same ties (IEEE division, half-even), but the rotation runs in
            # tf32 passes on Triton, so allow a code to land one step away now and then
            tol = 1e-4 if not transforms else 0.05 * float(want.abs().max())
            torch.testing.assert_close(got, want, rtol=1e-3, atol=tol, msg=f"{layer} m={m}")
        assert layer._runtime.layout_bytes() > 0  # the layout was made once and kept outside the state
        assert all(k.split(".")[0] in dict(layer.named_buffers()) for k in layer.state_dict())
