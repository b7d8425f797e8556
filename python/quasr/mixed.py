"""Mixed precision to a size budget, end to end: calibration audio -> sensitivity -> allocation ->
range calibration -> swap. The pieces live in sensitivity.py (scores, errors), allocate.py (size
model, allocators) and quantize.py (clipping); this module wires them for the CLI and experiments."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .adapters import get_adapter
from .allocate import MB, Allocation, SizeModel, allocate
from .plan import model_size_bytes, rtn_quantizer, swap
from .sensitivity import ERRORS, SCORES, collect_statistics, error_table, fisher_diagonal, sensitivity_scores


@dataclass
class MixedPrecisionResult:
    allocation: Allocation
    plan: dict
    scores: dict[str, float] | None
    errors: dict[str, dict[int, float]] | None
    layer_order: list[str]
    blocks: dict[str, str]  # layer -> block kind
    n_calibration_clips: int
    settings: dict

    def report(self) -> dict:
        return {**self.allocation.summary(), **self.settings, "n_calibration_clips": self.n_calibration_clips,
                "layers": [{"name": n, "block": self.blocks[n], "bits": self.allocation.bits[n],
                            **({"score": self.scores[n]} if self.scores else {})}
                           for n in self.layer_order if n in self.allocation.bits]}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"plan": self.plan, "report": self.report()}, indent=1))


def quantize_to_budget(model, processor, budget_mb: float | None = None, calibration: list[np.ndarray] | None = None,
                       allocation: str = "myqasr", sensitivity: str = "median", error: str = "fisher",
                       clip: str | None = None, group_size: int | None = 128, symmetric: bool = False,
                       keep: tuple[str, ...] = (), language: str | None = None, batch_size: int = 8,
                       average_bits: float | None = None, seed: int = 0, progress: bool = False,
                       apply: bool = True) -> MixedPrecisionResult:
    """Choose per-layer bits (2-8) so the model fits `budget_mb` (or the size of `average_bits`),
    then quantize it in place (unless apply=False).

    Calibration audio drives the sensitivity scores (myqasr/reversed), the error estimates (optimal)
    and, with clip="hessian" (the default when calibration audio is given), the weight clipping.
    `uniform` and `shuffled` need no audio; without audio the clipping is MSE.
    """
    if (budget_mb is None) == (average_bits is None):
        raise ValueError("give exactly one of budget_mb and average_bits")
    if sensitivity not in SCORES:
        raise ValueError(f"sensitivity must be one of {SCORES}, got {sensitivity!r}")
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
    adapter = get_adapter(model, processor)
    order = adapter.layer_order()
    blocks = {n: b.kind for b in adapter.blocks() for n in b.layers}
    sm = SizeModel(model, order, group_size, symmetric, keep)
    budget = budget_mb * MB if budget_mb is not None else sm.budget_for_average_bits(average_bits)
    sm.check_budget(budget)
    needs_audio = allocation in ("myqasr", "reversed", "optimal")
    if needs_audio and not calibration:
        raise ValueError(f"the {allocation} allocation needs calibration audio (--calib); "
                         f"uniform and shuffled work without it")
    clip = clip or ("hessian" if calibration else "mse")
    batches = stats = fisher = scores = errors = None
    if calibration:
        batches = adapter.calibration_batches(calibration, batch_size, language, progress)
        if sensitivity in ("median", "mean", "max", "std", "var") or clip == "hessian" or (allocation == "optimal" and error == "output"):
            stats = collect_statistics(adapter, batches, sm.names, progress)
        if (allocation in ("myqasr", "reversed") and sensitivity == "fisher") or (allocation == "optimal" and error == "fisher"):
            fisher = fisher_diagonal(adapter, batches, sm.names, progress)
        if allocation in ("myqasr", "reversed"):
            scores = sensitivity_scores(adapter, batches, sensitivity, stats=stats, fisher=fisher, progress=progress,
                                        group_size=group_size, symmetric=symmetric, layers=sm.names)
        if allocation == "optimal":
            errors = error_table(adapter, batches, error, group_size=group_size, symmetric=symmetric,
                                 clip=clip, stats=stats, fisher=fisher, progress=progress)
            errors = {n: errors[n] for n in sm.names}
    elif clip == "hessian":
        raise ValueError("hessian clipping needs calibration audio; use clip='mse' or 'minmax' without it")
    alloc = allocate(allocation, sm, budget, scores=scores, errors=errors, layer_order=order, seed=seed)
    plan = sm.plan(alloc.bits)
    settings = {"sensitivity": sensitivity if allocation in ("myqasr", "reversed") else None,
                "error": error if allocation == "optimal" else None, "clip": clip,
                "group_size": group_size, "symmetric": symmetric}
    result = MixedPrecisionResult(alloc, plan, scores, errors, order, blocks,
                                  len(calibration) if calibration else 0, settings)
    if apply:
        importance = stats.input_moments() if stats is not None else None
        swap(model, plan, rtn_quantizer(clip, importance), progress=progress)
        actual = model_size_bytes(model)
        if actual != alloc.size_bytes:  # the size model must be exact: a mismatch is a bug, not noise
            raise RuntimeError(f"predicted {alloc.size_bytes} bytes but the quantized model has {actual}")
    return result


def plot_bits(result: MixedPrecisionResult, path: str | Path, title: str = "") -> None:
    """Bar chart of bits per layer in execution order, coloured by block kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in result.layer_order if n in result.allocation.bits]
    colours = {"frontend": "tab:purple", "encoder": "tab:blue", "decoder": "tab:orange", "head": "tab:red"}
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.09), 3))
    ax.bar(range(len(names)), [result.allocation.bits[n] for n in names],
           color=[colours.get(result.blocks[n], "grey") for n in names], width=1.0, edgecolor="white", linewidth=0.3)
    for kind, c in colours.items():
        if kind in result.blocks.values():
            ax.bar([], [], color=c, label=kind)
    s = result.allocation.summary()
    ax.set_title(title or f"{s['allocation']}: {s['size_mb']:.2f} / {s['budget_mb']:.2f} MB, avg {s['average_bits']:.2f} bits")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("bits")
    ax.set_ylim(0, 8.5)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.legend(loc="lower right", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
