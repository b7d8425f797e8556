"""Triton GPU kernels of quasr (shipped as quasr.triton_kernels; needs the `quasr[gpu]` extra).

Importing this package never fails for want of Triton: `AVAILABLE` says whether the kernels can be
used and `STATUS` why not; the entry points then raise ImportError with that reason.

- `repack(pw) -> TritonLayout`: the runtime layout (K-major int32 words), made once per layer.
- `qlinear(x, layout, bias, input_mul, act_bits, act_symmetric, act_qparams, path, config)`.
- `aot_variants()`: the shipped kernel configurations, for ahead-of-time compile checks.
"""

from __future__ import annotations

from .layout import TritonLayout, layout_nbytes, repack, unpack_layout

try:
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # ImportError, or a broken install
    AVAILABLE = False
    STATUS = f"triton is not importable ({type(exc).__name__}: {exc}); install the extra: pip install 'quasr[gpu]'"
    _q = None
else:
    # Imported now, before the function `qlinear` below is defined: importing a submodule sets the
    # package attribute of its name, which must end up being the function, not the module.
    import importlib

    _q = importlib.import_module(".qlinear", __name__)
    AVAILABLE = True
    STATUS = ""


def _qlinear_module():
    if _q is None:
        raise ImportError(STATUS)
    return _q


def qlinear(x, layout, bias=None, input_mul=None, act_bits=0, act_symmetric=False, act_qparams=None, path="auto",
            config=None):
    return _qlinear_module().qlinear(x, layout, bias, input_mul, act_bits, act_symmetric, act_qparams, path, config)


qlinear.__doc__ = """y = T(x) @ W^T + bias with the fused Triton kernels (see triton_kernels/qlinear.py)."""


def act_ranges(x2, input_mul, bits, symmetric):
    return _qlinear_module().act_ranges(x2, input_mul, bits, symmetric)


def aot_variants(full: bool = False):
    return _qlinear_module().aot_variants(full)


def compile_attrs(variant) -> dict:
    """ASTSource attrs (tt.divisibility=16 hints the JIT would add at run time) for a qlinear variant."""
    return _qlinear_module().compile_attrs(variant)


def rotate(x, signs, orders, dense, scale):
    """The online rotation (triton_kernels/hadamard.py)."""
    _qlinear_module()  # raises the ImportError when Triton is missing
    from .hadamard import rotate as _rotate

    return _rotate(x, signs, orders, dense, scale)


__all__ = ["AVAILABLE", "STATUS", "TritonLayout", "act_ranges", "aot_variants", "compile_attrs", "layout_nbytes", "qlinear", "repack",
           "rotate", "unpack_layout"]
