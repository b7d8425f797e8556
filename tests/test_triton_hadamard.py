"""The Triton online rotation (triton_kernels/hadamard.py) against the plain-torch reference
(quasr.kernels.reference.rotate): the factorizations real layers produce (Rotation.native_factors
of Whisper/Moonshine/Wav2Vec2 widths: Sylvester axes, Paley cores, three-factor rows), learned
SpinQuant factors, fp32/fp16/bf16 input, several row counts and leading shapes. On the GPU where
there is one, else under TRITON_INTERPRET=1 (set before Triton is imported). The interpreter is
chosen once per process, when Triton is imported: if an earlier test module imported it in compiled
mode on a machine without CUDA, this file reruns itself in a subprocess (test_in_subprocess)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

try:
    from quasr.triton_kernels import hadamard
except ImportError:
    sys.path.insert(0, str(ROOT))
    from triton_kernels import hadamard

from quasr.kernels.reference import rotate as reference_rotate  # noqa: E402
from quasr.rotation import Rotation, random_signs  # noqa: E402

# Without CUDA the kernel must be interpreted; compiled mode here means triton came in too early.
WRONG_MODE = not torch.cuda.is_available() and not hadamard.interpreted()


@pytest.fixture(autouse=True)
def _right_mode(request):
    if WRONG_MODE and request.node.name != "test_in_subprocess":
        pytest.skip("triton was imported in compiled mode without a GPU: see test_in_subprocess")


def test_in_subprocess():
    if not WRONG_MODE:
        pytest.skip("this process runs the kernels directly")
    env = dict(os.environ, TRITON_INTERPRET="1", _QUASR_TRITON_SUBPROCESS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


DEV = "cuda" if torch.cuda.is_available() else "cpu"
WIDTHS = [384, 512, 768, 1024, 1536, 2048, 3072, 4096, 5120, 2560, 1280, 80]


def _on(orders, dense, device=DEV):
    return orders, [None if d is None else d.to(device) for d in dense]


def _check(x, signs, orders, dense, scale, tol=2e-5):
    y = hadamard.rotate(x, signs, orders, dense, scale)
    want = reference_rotate(x.cpu(), None if signs is None else signs.cpu(), orders,
                            [None if d is None else d.cpu() for d in dense], scale)
    assert y.dtype == torch.float32 and y.shape == x.shape and y.device == x.device
    torch.testing.assert_close(y.cpu(), want, atol=tol * max(1.0, want.abs().max().item()), rtol=tol)


@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_real_widths_match_the_reference(k, dtype):
    rot = Rotation(random_signs(k, 0))
    orders, dense = _on(*rot.native_factors()[:2])
    scale = rot.native_factors()[2]
    signs = rot.signs.to(DEV)
    gen = torch.Generator().manual_seed(k)
    for rows in (1, 5):
        x = torch.randn(rows, k, generator=gen).to(DEV, dtype)
        _check(x, signs, orders, dense, scale)


def test_bf16_leading_dims_and_no_signs():
    k = 1536
    orders, dense, scale = Rotation(random_signs(k, 1)).native_factors()
    orders, dense = _on(orders, dense)
    x = torch.randn(2, 3, k).to(DEV, torch.bfloat16)
    _check(x, random_signs(k, 1).to(DEV), orders, dense, scale)
    _check(x, None, orders, dense, scale)


def test_many_rows_cross_block_boundaries():
    # 70 rows x 4096: R = 70*64 rows per axis pass, several BLOCK_R tiles and a ragged last one
    k = 4096
    orders, dense, scale = Rotation(random_signs(k, 2)).native_factors()
    x = torch.randn(70, k, generator=torch.Generator().manual_seed(3)).to(DEV)
    _check(x, random_signs(k, 2).to(DEV), *_on(orders, dense), scale)


def _orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.to(torch.float32)


@pytest.mark.parametrize("k", [384, 1536, 5120])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_learned_factors_two_dense_orthogonal(k, dtype):
    plain = Rotation(random_signs(k, 4))
    rot = Rotation(random_signs(k, 4), _orthogonal(plain.a, 5), _orthogonal(plain.b, 6))
    orders, dense, scale = rot.native_factors()
    assert all(d is not None for d in dense) and len(dense) == 2
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(k)).to(DEV, dtype)
    _check(x, rot.signs.to(DEV), *_on(orders, dense), scale)
    # the layer's own rotation (x M) agrees too
    y = hadamard.rotate(x, rot.signs.to(DEV), *_on(orders, dense), scale).cpu()
    torch.testing.assert_close(y, rot.reference_apply(x.cpu()), atol=5e-5, rtol=5e-5)


def test_generic_factorizations():
    gen = torch.Generator().manual_seed(7)
    cases = [([2, 3, 8], [None, torch.randn(3, 3, generator=gen), None]),  # tiny axes, padded tiles
             ([128], [None]),  # Sylvester 128 split into 8 x 16
             ([100, 4], [torch.randn(100, 100, generator=gen), None]),  # dense order > 64: N blocks, K loop
             ([16, 16], [None, None]),  # two Sylvester axes not merged by the caller
             ([1, 32], [None, None])]  # an identity axis
    for orders, dense in cases:
        k = 1
        for o in orders:
            k *= o
        x = torch.randn(4, k, generator=gen).to(DEV)
        _check(x, random_signs(k, 8).to(DEV), *_on(orders, dense), 0.5)


def test_identity_only_and_empty():
    x = torch.randn(3, 1).to(DEV)
    _check(x, torch.tensor([-1], dtype=torch.int8, device=DEV), [1], [None], 2.0)
    e = torch.randn(0, 512).to(DEV)
    assert hadamard.rotate(e, None, [512], [None], 1.0).shape == (0, 512)


def test_non_contiguous_input():
    k = 768
    orders, dense, scale = Rotation(random_signs(k, 9)).native_factors()
    x = torch.randn(k, 6).to(DEV).T  # [6, k], stride (1, 6)
    _check(x, random_signs(k, 9).to(DEV), *_on(orders, dense), scale)


def test_plan_splits_large_sylvester_axes_into_balanced_passes():
    assert [p[:3] for p in hadamard.plan([4096], [None])] == [(1, 64, 64), (64, 64, 1)]
    assert [p[1] for p in hadamard.plan([2048], [None])] == [64, 32]
    assert [p[1] for p in hadamard.plan([512], [None])] == [32, 16]
    assert [p[1] for p in hadamard.plan([64], [None])] == [64]
    d = torch.eye(24)
    assert [p[:3] for p in hadamard.plan([16, 24], [None, d])] == [(1, 16, 24), (16, 24, 1)]
    assert hadamard.plan([1], [None]) == []


def test_bad_arguments_raise():
    x = torch.randn(2, 96).to(DEV)
    with pytest.raises(ValueError, match="multiply"):
        hadamard.rotate(x, None, [8, 8], [None, None], 1.0)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard.rotate(x, None, [96], [None], 1.0)
    with pytest.raises(ValueError, match="dense factor"):
        hadamard.rotate(x, None, [8, 12], [None, torch.eye(8).to(DEV)], 1.0)
    with pytest.raises(TypeError):
        hadamard.rotate(x.double(), None, [96 // 12, 12], [None, torch.eye(12).to(DEV)], 1.0)


def test_aot_variants_cover_every_launch_configuration():
    # (tests/test_triton_compile.py compiles them, in a process without TRITON_INTERPRET)
    vs = hadamard.aot_variants()
    names = [v.name for v in vs]
    assert len(names) == len(set(names)) == 36
    got = {(v.attrs["dtype"], v.attrs["kind"], v.attrs["config"], v.attrs["signs"]) for v in vs}
    for k in WIDTHS + [128, 300 * 4]:
        f = Rotation(random_signs(k, 0)).native_factors() if k != 1200 else ([1200], [torch.eye(1200)], 1.0)
        for i, (outer, order, inner, mat) in enumerate(hadamard.plan(f[0], f[1])):
            for dtype in ("fp16", "bf16", "fp32") if i == 0 else ("fp32",):
                for signs in (True, False) if i == 0 else (False,):
                    kind = "sylvester" if mat is None else "dense"
                    assert (dtype, kind, hadamard.config_for(order), signs) in got
