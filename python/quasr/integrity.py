"""Integrity checks shared by loading, saving and swapping: tensor digests and non-finite values."""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import torch
from torch import nn


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (any dtype: read as raw bytes, no copy when contiguous on the CPU)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().data).hexdigest()


def json_digest(obj) -> str:
    """sha256 of a JSON value in canonical form (key order and whitespace do not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """'name (n of m)' for each floating tensor holding NaN or infinite values."""
    bad = []
    for name, t in named:
        if t is None or not t.is_floating_point() or t.is_meta:
            continue
        n = int((~torch.isfinite(t.detach())).sum())
        if n:
            bad.append(f"{name} ({n} of {t.numel()})")
    return bad


def model_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer with its name (shared ones once)."""
    return list(model.named_parameters()) + list(model.named_buffers())


def check_finite_model(model: nn.Module, where: str, exc_type: type[Exception] = ValueError) -> None:
    """Raise naming every tensor (weights, biases, norms, embeddings, scales) with NaN/inf values."""
    bad = nonfinite(model_tensors(model))
    if bad:
        raise exc_type(f"{where}: NaN or infinite values in {len(bad)} tensor(s): {', '.join(bad[:5])}"
                       f"{' ...' if len(bad) > 5 else ''}; the checkpoint is corrupt: re-create or re-download it")
