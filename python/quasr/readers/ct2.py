"""Reader for CTranslate2 `model.bin` files (binary format version <= 6), written from the format
description in docs/MODELS.md. Returns plain torch tensors; aliases resolved."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class CT2FormatError(ValueError):
    pass


def read_ct2_model(path: str | Path | bytes) -> tuple[str, dict[str, torch.Tensor]]:
    """Parse a CTranslate2 model.bin -> (spec name, {variable name: tensor}). `path` may be bytes."""
    data = path if isinstance(path, (bytes, bytearray, memoryview)) else Path(path).read_bytes()
    buf = memoryview(data)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(buf):
            raise CT2FormatError(f"truncated CTranslate2 file: wanted {size} bytes at offset {pos}, file has {len(buf)}")
        out = struct.unpack_from(fmt, buf, pos)
        pos += size
        return out if len(out) > 1 else out[0]

    def string() -> str:
        nonlocal pos
        n = take("<H")
        if n == 0 or pos + n > len(buf):
            raise CT2FormatError(f"corrupt string at offset {pos}")
        s = bytes(buf[pos : pos + n - 1]).decode("utf-8")
        pos += n
        return s

    version = take("<I")
    if not 1 <= version <= 6:
        raise CT2FormatError(f"not a CTranslate2 model.bin (binary version {version}, expected 1-6)")
    spec = ""
    if version >= 2:
        spec = string()
        take("<I")  # spec revision
    n_vars = take("<I")
    if n_vars > 100000:
        raise CT2FormatError(f"corrupt CTranslate2 file: {n_vars} variables")
    tensors: dict[str, torch.Tensor] = {}
    for _ in range(n_vars):
        name = string()
        rank = take("<B")
        dims = [take("<I") for _ in range(rank)]
        if version >= 4:
            dtype_id = take("<B")
            nbytes = take("<I")
        else:
            dtype_id, nbytes = 0, take("<I") * 4
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"variable {name}: unknown dtype id {dtype_id}")
        if pos + nbytes > len(buf):
            raise CT2FormatError(f"truncated CTranslate2 file: variable {name} needs {nbytes} bytes at offset {pos}")
        raw = bytes(buf[pos : pos + nbytes])
        pos += nbytes
        if _DTYPES[dtype_id] == "bfloat16":
            t = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw, dtype=_DTYPES[dtype_id]).copy())
        expected = int(np.prod(dims)) if dims else 1
        if t.numel() != expected:
            raise CT2FormatError(f"variable {name}: {t.numel()} values for shape {dims}")
        tensors[name] = t.reshape(dims) if dims else t.reshape(())
    if version >= 3 and pos < len(buf):
        for _ in range(take("<I")):
            alias, target = string(), string()
            if target not in tensors:
                raise CT2FormatError(f"alias {alias} -> missing variable {target}")
            tensors[alias] = tensors[target]
    return spec, tensors
