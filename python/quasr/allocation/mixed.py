"""Mixed precision to a size budget, end to end: calibration audio -> sensitivity -> allocation ->
range calibration -> swap. The pieces live in sensitivity.py (scores, errors), allocate.py (size
model, allocators) and quasr/quantize.py (clipping); this module wires them for the CLI and experiments."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..adapters import get_adapter
from ..plan import model_size_bytes, rtn_quantizer, swap
from .allocate import MB, Allocation, SizeModel, allocate
from .sensitivity import (DISTANCES, ERRORS, SCORES, STATISTICS, collect_statistics, distance_scores, error_table,
                          fisher_diagonal, sensitivity_scores)


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


class Calibrator:
    """Everything measured on calibration audio, computed once on demand and reused across budgets
    and allocations: fixed batches, activation statistics, Fisher diagonal, scores, error tables.
    Built on the float model; the quantized copies it plans for must have the same layers."""

    def __init__(self, model, processor, calibration: list, language: str | None = None,
                 batch_size: int = 8, group_size: int | None = 128, symmetric: bool = False,
                 layers: list[str] | None = None, progress: bool = False):
        """`calibration`: 16 kHz waveforms, or CalibrationBatches already built on this float model."""
        from ..adapters.base import CalibrationBatch

        if not calibration:
            raise ValueError("calibration needs at least one clip")
        self.adapter = get_adapter(model, processor)
        self.group_size, self.symmetric, self.progress = group_size, symmetric, progress
        self.layers = layers or self.adapter.layer_order()
        if isinstance(calibration[0], CalibrationBatch):
            self.batches = list(calibration)
            self.n_clips = sum(len(b.texts) for b in self.batches)
        else:
            self.n_clips = len(calibration)
            self.batches = self.adapter.calibration_batches(calibration, batch_size, language, progress)
        self._stats = self._fisher = None
        self._scores: dict = {}
        self._errors: dict = {}

    def reuse(self, other: "Calibrator") -> "Calibrator":
        """Take what `other` has measured so far (statistics, Fisher, scores, error tables; the score
        and error dicts are shared, so later ones land in both). Only for a fresh copy of the same
        float model calibrated on the same batches: a sweep reloads the float model for every cell,
        and this spares each mixed-precision cell the sensitivity passes."""
        if (other.group_size, other.symmetric, other.layers) != (self.group_size, self.symmetric, self.layers):
            raise ValueError("Calibrator.reuse: the calibrators differ in group size, symmetry or layers")
        self._stats, self._fisher, self._scores, self._errors = other._stats, other._fisher, other._scores, other._errors
        return self

    @property
    def stats(self):
        if self._stats is None:
            self._stats = collect_statistics(self.adapter, self.batches, self.layers, self.progress)
        return self._stats

    @property
    def fisher(self):
        if self._fisher is None:
            self._fisher = fisher_diagonal(self.adapter, self.batches, self.layers, self.progress)
        return self._fisher

    def scores(self, method: str) -> dict[str, float]:
        if method not in self._scores:
            if method in DISTANCES:
                self._scores[method] = distance_scores(self.adapter, self.batches, method, group_size=self.group_size,
                                                       symmetric=self.symmetric, layers=self.layers,
                                                       progress=self.progress)
            else:
                self._scores[method] = sensitivity_scores(
                    self.adapter, self.batches, method, stats=self.stats if method in STATISTICS else None,
                    fisher=self.fisher if method == "fisher" else None, progress=self.progress)
        return self._scores[method]

    def errors(self, method: str, clip: str) -> dict[str, dict[int, float]]:
        if (method, clip) not in self._errors:
            table = error_table(self.adapter, self.batches, method, group_size=self.group_size, symmetric=self.symmetric,
                                clip=clip, stats=self.stats if method == "output" or clip == "hessian" else None,
                                fisher=self.fisher if method == "fisher" else None, progress=self.progress)
            self._errors[(method, clip)] = {n: table[n] for n in self.layers}
        return self._errors[(method, clip)]


def quantize_to_budget(model, processor, budget_mb: float | None = None, calibration: list[np.ndarray] | None = None,
                       allocation: str = "myqasr", sensitivity: str = "median", error: str = "fisher",
                       clip: str | None = None, group_size: int | None = 128, symmetric: bool = False,
                       keep: tuple[str, ...] = (), language: str | None = None, batch_size: int = 8,
                       average_bits: float | None = None, seed: int = 0, progress: bool = False,
                       apply: bool = True, calibrator: Calibrator | None = None, method="rtn",
                       act_bits: int | None = None, act_granularity: str = "token",
                       act_symmetric: bool = False) -> MixedPrecisionResult:
    """Choose per-layer bits (2-8) so the model fits `budget_mb` (or the size of `average_bits`),
    then quantize it in place (unless apply=False).

    Calibration audio (or a `Calibrator` built on an identical float model, to reuse its
    measurements) drives the sensitivity scores (myqasr/reversed), the error estimates (optimal) and,
    with clip="hessian" (the default when calibration is given), the weight clipping. `uniform` and
    `shuffled` need no audio; without audio the clipping is MSE.

    `method` (a name from quasr.methods.METHODS or a Method) quantizes the allocated plan, with
    activation fake-quant when `act_bits` is given. The bytes a method stores beside each layer
    (rotations, input multiplies, static ranges) are reserved in the budget before bits are chosen, so
    the result fits whatever the method does; with plain RTN the predicted size is exact.
    """
    from ..methods import Method, activation_spec, get_method, quantize, with_activations
    from ..methods.pipeline import transform_overhead

    if (budget_mb is None) == (average_bits is None):
        raise ValueError("give exactly one of budget_mb and average_bits")
    if sensitivity not in SCORES:
        raise ValueError(f"sensitivity must be one of {SCORES}, got {sensitivity!r}")
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
    adapter = get_adapter(model, processor)
    order = adapter.layer_order()
    blocks = {n: b.kind for b in adapter.blocks() for n in b.layers}
    has_audio = calibrator is not None or bool(calibration)
    clip = clip or ("hessian" if has_audio else "mse")
    if not isinstance(method, Method):
        method = get_method(method, clip=clip)
    act_spec = activation_spec(act_bits, act_granularity, act_symmetric)
    plain_rtn = method.name == "rtn" and not act_spec
    if not plain_rtn and apply and not has_audio and (method.needs_calibration or act_granularity == "tensor"):
        raise ValueError(f"{method.name} with these activation settings needs calibration audio (--calib DATA)")
    overhead = None if plain_rtn else transform_overhead(model, method, act_spec, order)
    sm = SizeModel(model, order, group_size, symmetric, keep, overhead)
    budget = budget_mb * MB if budget_mb is not None else sm.budget_for_average_bits(average_bits)
    sm.check_budget(budget)
    if allocation in ("myqasr", "reversed", "optimal") and not has_audio:
        raise ValueError(f"the {allocation} allocation needs calibration audio (--calib); "
                         f"uniform and shuffled work without it")
    if clip == "hessian" and not has_audio:
        raise ValueError("hessian clipping needs calibration audio; use clip='mse' or 'minmax' without it")
    if has_audio and calibrator is None:
        calibrator = Calibrator(model, processor, calibration, language, batch_size, group_size, symmetric,
                                sm.names, progress)
    if calibrator is not None and (calibrator.group_size, calibrator.symmetric) != (group_size, symmetric):
        raise ValueError("the calibrator was built for another group size / symmetry")
    scores = errors = None
    if allocation in ("myqasr", "reversed"):
        scores = {n: calibrator.scores(sensitivity)[n] for n in sm.names}
    if allocation == "optimal":
        errors = {n: calibrator.errors(error, clip)[n] for n in sm.names}
    alloc = allocate(allocation, sm, budget, scores=scores, errors=errors, layer_order=order, seed=seed)
    plan = sm.plan(alloc.bits)
    settings = {"sensitivity": sensitivity if allocation in ("myqasr", "reversed") else None,
                "error": error if allocation == "optimal" else None, "clip": clip,
                "group_size": group_size, "symmetric": symmetric, "method": method.name,
                "act_bits": act_spec.get("act_bits"), "act_granularity": act_spec.get("act_granularity")}
    result = MixedPrecisionResult(alloc, plan, scores, errors, order, blocks,
                                  calibrator.n_clips if calibrator else 0, settings)
    if apply:
        if plain_rtn:
            importance = calibrator.stats.input_moments() if clip == "hessian" else None
            swap(model, plan, rtn_quantizer(clip, importance), progress=progress)
        else:
            full = with_activations(plan, act_bits, act_granularity, act_symmetric)
            batches = calibrator.batches if calibrator is not None else None  # the same clips, prepared once
            _, result.plan = quantize(adapter, full, batches, method, batch_size, language, progress)
        actual = model_size_bytes(model)
        # the size model is exact for RTN and an upper bound with a method's transforms: a model over
        # its prediction is a bug, not noise
        if actual > alloc.size_bytes or (plain_rtn and actual != alloc.size_bytes):
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
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=k) for k, c in colours.items() if k in result.blocks.values()]
    s = result.allocation.summary()
    ax.set_title(title or f"{s['allocation']}: {s['size_mb']:.2f} / {s['budget_mb']:.2f} MB, avg {s['average_bits']:.2f} bits")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("bits")
    ax.set_ylim(0, 8.5)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.legend(handles=handles, loc="lower right", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
