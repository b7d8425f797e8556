"""The blockwise calibration pipeline every PTQ method runs in.

Blocks (adapter.blocks(): the front-end convolutions, each encoder and decoder layer, the head) are
quantized in execution order. For each block, the calibration batches run through the model, whose
earlier blocks are already quantized, until the block's last layer has run (the pass stops there):
so each block is calibrated on the inputs the quantized model really feeds it, not the float
model's. Decoder blocks see the float model's own greedy transcripts as teacher-forced tokens
(CalibrationBatch, built before anything is quantized), so no labels are needed. Hooks on the
block's layers accumulate, per layer, the statistics methods need (`LayerInputs`); the method turns
them into packed weights and input transforms, and `swap` installs them before the next block.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..adapters.base import CalibrationBatch, ModelAdapter
from ..format import PackedWeight
from ..integrity import check_finite_model
from ..ops import ActQuant
from ..plan import (KEEP, LayerTransform, flat_weight, is_grouped_conv, quantizable_layers, swap, transform_bytes,
                    validate_plan)
from ..plan.swap import _tied_embeddings
from ..ranges import ACTIVATION_RANGE_METHODS, activation_range
from ..rotation import Rotation, rotation_factors


class _StopForward(Exception):
    pass


def layer_input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """A layer's input as the rows its GEMM sees: [tokens, K] for a Linear, the unfolded columns
    [B*T_out, Cin*k] for a Conv1d (as QuantConv1d computes them). None for grouped convolutions
    (each group sees different columns; methods fall back to RTN there)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if is_grouped_conv(module):
        return None
    return next(grouped_conv_rows(module, x))


def grouped_conv_rows(module: nn.Conv1d, x: torch.Tensor):
    """The unfolded input rows [B*T_out, Cin/groups*k] of each group of a Conv1d (one group for a
    plain one), one group at a time (QuantConv1d's GEMM inputs)."""
    if module.padding[0]:
        x = F.pad(x, (module.padding[0], module.padding[0]))
    for xg in x.chunk(module.groups, dim=1):
        cols = xg.unfold(2, module.kernel_size[0], module.stride[0])  # [B, Cin/groups, T, k]
        yield cols.permute(0, 2, 1, 3).reshape(-1, cols.shape[1] * cols.shape[3])


@dataclass
class LayerInputs:
    """Statistics of one layer's GEMM inputs over the calibration audio (after the layer's rotation,
    if it has one): sum of X^T X (for GPTQ's Hessian), per-channel max |x| and sum |x| (SmoothQuant,
    AWQ), and a uniform random sample of at most `max_samples` input rows (AWQ's scale search,
    OmniQuant/SpinQuant training, static activation ranges)."""

    k: int
    need_hessian: bool = False
    max_samples: int = 2048
    seed: int = 0
    count: int = 0
    xtx: torch.Tensor | None = None
    abs_max: torch.Tensor | None = None
    abs_sum: torch.Tensor | None = None
    col_min: torch.Tensor | None = None  # per-channel extremes of every row seen (the sample may miss them)
    col_max: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    range_only: bool = False  # a grouped conv's input values: good for activation ranges only
    _keys: torch.Tensor | None = field(default=None, repr=False)

    def add(self, rows: torch.Tensor) -> None:
        x = rows.detach().to(torch.float32)
        if x.numel() == 0:
            return
        self.count += x.shape[0]
        a = x.abs()
        amax, asum = a.amax(0), a.sum(0)
        self.abs_max = amax if self.abs_max is None else torch.maximum(self.abs_max, amax)
        self.abs_sum = asum if self.abs_sum is None else self.abs_sum + asum
        lo, hi = x.amin(0), x.amax(0)
        self.col_min = lo if self.col_min is None else torch.minimum(self.col_min, lo)
        self.col_max = hi if self.col_max is None else torch.maximum(self.col_max, hi)
        if self.need_hessian:
            xd = x.double()
            self.xtx = xd.T @ xd if self.xtx is None else self.xtx + xd.T @ xd
        # reservoir by random priority: the kept rows are a uniform sample of all rows seen
        g = torch.Generator().manual_seed(self.seed + self.count)
        keys = torch.rand(x.shape[0], generator=g).to(x.device)
        pool = x if self.samples is None else torch.cat([self.samples, x])
        pool_keys = keys if self._keys is None else torch.cat([self._keys, keys])
        if pool.shape[0] > self.max_samples:
            keep = pool_keys.topk(self.max_samples).indices
            pool, pool_keys = pool[keep], pool_keys[keep]
        self.samples, self._keys = pool, pool_keys

    def range_samples(self) -> torch.Tensor:
        """The row sample plus two rows of per-channel extremes: what a static activation range is
        searched on, so that its min/max are those of every row seen, not of the sample."""
        return torch.cat([self.samples, self.col_min[None], self.col_max[None]])

    def hessian(self) -> torch.Tensor:
        """H = 2 X^T X / n, GPTQ's layer-wise Hessian."""
        if self.xtx is None:
            raise ValueError("no Hessian was collected for this layer (need_hessian=False or no calibration rows)")
        return (2.0 / max(self.count, 1) * self.xtx).float()

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)

    def second_moment(self) -> torch.Tensor:
        if self.xtx is not None:
            return torch.diagonal(self.xtx).float() / max(self.count, 1)
        return (self.samples**2).mean(0)


@dataclass
class LayerJob:
    """What a method is asked to quantize: one layer, its spec, its (rotated) float weight [N, K]
    and its input statistics (None where none could be collected: grouped convolutions)."""

    name: str
    module: nn.Module
    spec: dict
    weight: torch.Tensor
    inputs: LayerInputs | None
    rotation: Rotation | None
    tied: bool

    @property
    def act(self) -> ActQuant | None:
        """The activation quantizer, dynamic; a static one gets its range after the method ran."""
        return ActQuant(self.spec["act_bits"], self.spec["act_symmetric"]) if self.spec.get("act_bits") else None


@dataclass
class LayerResult:
    """A method's answer for one layer: the packed (transformed) weight, the per-channel input
    multiply if it scaled channels, the per-channel input shift if it shifted them (OmniQuant's
    LET; the bias absorbs W delta at swap), and, if it changed the layer's rotation (SpinQuant), the
    new rotation and the input statistics under it (for static activation ranges)."""

    weight: PackedWeight
    input_mul: torch.Tensor | None = None
    rotation: Rotation | None = None
    inputs: LayerInputs | None = None
    input_shift: torch.Tensor | None = None


def _take(value, rows: torch.Tensor, batch: int):
    """`value` (a call argument) restricted to the sequences `rows` where it has a batch dimension."""
    if torch.is_tensor(value) and value.dim() and value.shape[0] == batch:
        return value[rows]
    if isinstance(value, tuple):
        return tuple(_take(v, rows, batch) for v in value)
    return value


def _is_kv_cache(value) -> bool:
    from transformers import Cache

    return isinstance(value, Cache)


@dataclass
class BlockCalls:
    """What one transformer block received on each calibration batch (positional and keyword
    arguments: the quantized prefix's outputs, masks, position embeddings), so a method can rerun the
    block alone: for objectives on the block's output (OmniQuant's). KV caches are dropped (every
    call is a whole teacher-forced sequence)."""

    model: nn.Module
    name: str
    calls: list[tuple[tuple, dict]] = field(default_factory=list)

    @property
    def module(self) -> nn.Module:
        return self.model.get_submodule(self.name)

    def record(self, module, args, kwargs) -> None:
        # A KV cache is found by its type (transformers' public Cache class), not by the argument's
        # name, which changes between releases (past_key_value, past_key_values, cache): the model
        # has already appended this call's keys to it, so rerunning with it would see them twice.
        kwargs = {k: None if _is_kv_cache(v) else v for k, v in kwargs.items()}
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        self.calls.append((tuple(None if _is_kv_cache(a) else a.detach() if torch.is_tensor(a) else a for a in args),
                           kwargs))

    def n_sequences(self, i: int) -> int:
        return self.calls[i][0][0].shape[0]

    def run(self, i: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The block's hidden-state output on call i (only its sequences `rows`, if given)."""
        args, kwargs = self.calls[i]
        if rows is not None:
            b = self.n_sequences(i)
            args = tuple(_take(a, rows, b) for a in args)
            kwargs = {k: _take(v, rows, b) for k, v in kwargs.items()}
        out = self.module(*args, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def outputs(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [self.run(i) for i in range(len(self.calls))]

    @contextmanager
    def recording(self):
        """Context: every call of the block is recorded (run the calibration pass inside it)."""
        handle = self.module.register_forward_pre_hook(self.record, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()

    @contextmanager
    def substituted(self, modules: dict[str, nn.Module]):
        """Context: the block's layers (full names) replaced by `modules`, the block's own parameters
        frozen (a method training its substitutes must not touch them)."""
        saved, frozen = {}, [p for p in self.module.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            for name, sub in modules.items():
                parent, _, child = name.rpartition(".")
                holder = self.model.get_submodule(parent)
                saved[name] = getattr(holder, child)
                setattr(holder, child, sub)
            yield
        finally:
            for name, orig in saved.items():
                parent, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent), child, orig)
            for p in frozen:
                p.requires_grad_(True)


class BlockOutputCache:
    """Skips the finished prefix of the model on calibration passes.

    Once a block is quantized its output on each calibration batch no longer changes (its inputs
    come from blocks that are final too), so the pass after its quantization records that output
    and later passes replace the block's forward with a lookup: each block's calibration pass then
    runs about one block's worth of work instead of the whole prefix (O(blocks) instead of
    O(blocks^2) forward work). A block whose module holds other blocks (Whisper's front-end block is
    the whole encoder) is cached only once every block inside it is final. Outputs are kept for
    every cached block and batch: one hidden state per block per calibration clip.
    """

    def __init__(self, model: nn.Module, blocks: list):
        self.model = model
        names = [b.name for b in blocks]
        self.inner = {n: {o for o in names if o.startswith(n + ".")} for n in names}
        self.batch = 0
        self.done: set[str] = set()
        self.outputs: dict[str, dict[int, object]] = {}
        self._recording: dict[str, object] = {}
        self._frozen: list[nn.Module] = []

    def finished(self, block_name: str) -> None:
        """`block_name` is quantized: record the outputs of every block now final on the next pass."""
        self.done.add(block_name)
        for name in self.done:
            if name in self.outputs or not self.inner[name] <= self.done:
                continue
            store = self.outputs.setdefault(name, {})

            def hook(module, args, output, _store=store):
                _store.setdefault(self.batch, output)

            self._recording[name] = self.model.get_submodule(name).register_forward_hook(hook)

    def after_pass(self, n_batches: int) -> None:
        """Freeze every recording block that has seen all batches: later passes look its output up."""
        for name in list(self._recording):
            if len(self.outputs[name]) < n_batches:
                continue
            self._recording.pop(name).remove()
            module = self.model.get_submodule(name)
            store = self.outputs[name]
            module.forward = lambda *a, _store=store, **k: _store[self.batch]
            self._frozen.append(module)

    def close(self) -> None:
        for h in self._recording.values():
            h.remove()
        for module in self._frozen:
            del module.forward  # the instance attribute: the class's forward is back
        self._recording, self._frozen, self.outputs = {}, [], {}


def capture_block_inputs(adapter: ModelAdapter, batches: list[CalibrationBatch], layers: dict[str, nn.Module],
                         rotations: dict[str, Rotation], need_hessian: bool, max_samples: int,
                         progress: bool = False, cache: BlockOutputCache | None = None) -> dict[str, LayerInputs]:
    """Run the calibration batches until the last of `layers` has run, collecting their inputs
    (with a `cache`, finished blocks are looked up instead of run)."""
    stats = {n: LayerInputs(flat_weight(m).shape[1], need_hessian, max_samples, seed=i)
             for i, (n, m) in enumerate(layers.items())}
    last = list(layers)[-1]

    def hook(name):
        def fn(module, args, output):
            rows = layer_input_rows(module, args[0])
            if rows is not None:
                if name in rotations:
                    rows = rotations[name].apply(rows)
                stats[name].add(rows)
            else:
                # a grouped conv: no per-layer GEMM statistics (each group has its own weights), but
                # the rows every group's GEMM sees, rotated as the kernel rotates them, give the
                # values its activation fake-quant meets: good for a static range
                stats[name].range_only, stats[name].need_hessian = True, False
                for group_rows in grouped_conv_rows(module, args[0]):
                    stats[name].add(rotations[name].apply(group_rows) if name in rotations else group_rows)
            if name == last:
                raise _StopForward

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        for i, batch in enumerate(tqdm(batches, desc="block inputs", disable=not progress, leave=False)):
            if cache is not None:
                cache.batch = i
            try:
                with torch.no_grad():
                    adapter.forward_logits(batch)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    if cache is not None:
        cache.after_pass(len(batches))
    return {n: s for n, s in stats.items() if s.count}


class Method:
    """A PTQ method: hooks into the blockwise pipeline. Subclasses set `name`, whether they need
    calibration audio and Hessians, how they change a spec (`adjust_spec`: rotate/smooth), and
    implement `quantize_layer` (or `quantize_block` for methods that optimise layers jointly)."""

    name = "method"
    needs_calibration = True
    needs_hessian = False
    may_smooth = False  # whether quantize_layer may return an input_mul (a stored per-channel multiply)
    may_shift = False  # whether it may return an input_shift (on layers whose activations it quantizes)
    block_objective = False  # whether quantize_block wants the block's calls (BlockCalls) to rerun it
    max_samples = 2048

    def __init__(self, clip: str = "mse", act_range: str = "mse", **options):
        from ..quantize import CLIP_METHODS

        if clip not in CLIP_METHODS:
            raise ValueError(f"clip must be one of {CLIP_METHODS}, got {clip!r}")
        if act_range not in ACTIVATION_RANGE_METHODS:
            raise ValueError(f"act_range must be one of {ACTIVATION_RANGE_METHODS}, got {act_range!r}")
        self.clip, self.act_range = clip, act_range
        unknown = set(options) - set(self.options())
        if unknown:
            raise ValueError(f"{self.name} does not take options {sorted(unknown)}; it takes {sorted(self.options())}")
        for k, v in {**self.options(), **options}.items():
            setattr(self, k, v)

    @classmethod
    def options(cls) -> dict:
        """Method-specific options and their defaults."""
        return {}

    def adjust_spec(self, name: str, module: nn.Module, spec: dict, tied: bool) -> dict:
        return spec

    def planned_spec(self, name: str, module: nn.Module, spec: dict, tied: bool) -> dict:
        """The largest spec this method can turn `spec` into (every transform it may add): what a size
        budget has to reserve before the method runs."""
        out = self.adjust_spec(name, module, dict(spec), tied)
        if out.get("rotate") and _check_rotatable(flat_weight(module).shape[1], tied):
            out.pop("rotate")
        if self.may_smooth:
            out["smooth"] = True
        if self.may_shift and out.get("act_bits") and not is_grouped_conv(module):
            out["shift"] = True
        return out

    def quantize_block(self, jobs: list[LayerJob], block: BlockCalls | None = None) -> dict[str, LayerResult]:
        """Every layer of one block; `block` (encoder/decoder blocks of methods with
        `block_objective`) reruns the block on its calibration inputs."""
        return {j.name: self.quantize_layer(j) for j in jobs}

    def quantize_layer(self, job: LayerJob) -> LayerResult:
        raise NotImplementedError


def _check_rotatable(k: int, tied: bool) -> str | None:
    """Why this layer cannot be rotated, or None."""
    if tied:
        return "its weight is tied to an embedding"
    if rotation_factors(k) is None:
        return f"no Hadamard rotation of size {k} exists here"
    return None


def rotation_for(name: str, k: int) -> Rotation:
    from ..plan import default_rotation_signs

    return Rotation(default_rotation_signs(name, k))


def transform_overhead(model: nn.Module, method: Method, spec: dict, names: list[str] | None = None) -> dict[str, int]:
    """Bytes `method` may add beside each layer's packed weight (rotations, input multiplies, static
    activation ranges) when the layer is quantized with `spec` (bits do not matter): an upper bound,
    exact for rotations and static ranges; a scaling method may leave a layer unscaled."""
    layers = quantizable_layers(model)
    tied = _tied_embeddings(model, layers)
    names = list(layers) if names is None else names
    out = {}
    for n in names:
        w = flat_weight(layers[n])
        out[n] = transform_bytes(method.planned_spec(n, layers[n], dict(spec), bool(tied.get(n))), w.shape[1],
                                 w.shape[0], layers[n].bias is not None)
    return out


def quantize_model(adapter: ModelAdapter, plan: dict, method: Method, batches: list[CalibrationBatch] | None,
                   progress: bool = True, cache_blocks: bool = True) -> tuple[nn.Module, dict]:
    """Quantize adapter.model in place with `method`, block by block; returns (model, final plan).
    The final plan is the input plan with the transforms the method added (rotate/smooth).
    `cache_blocks` skips finished blocks on calibration passes (BlockOutputCache); the result is
    the same either way."""
    model = adapter.model
    specs = validate_plan(model, plan)
    check_finite_model(model, "quantize")  # once here; the per-block swaps skip it
    if method.needs_calibration and not batches:
        raise ValueError(f"{method.name} needs calibration audio (a few clips of the user's speech: --calib)")
    if any(s != KEEP and s.get("act_granularity") == "tensor" for s in specs.values()) and not batches:
        raise ValueError("static (per-tensor) activation ranges need calibration audio (--calib)")
    layers = quantizable_layers(model)
    tied = _tied_embeddings(model, layers)
    final: dict[str, dict | str] = {}
    for name, spec in specs.items():
        final[name] = spec if spec == KEEP else method.adjust_spec(name, layers[name], dict(spec), bool(tied.get(name)))
    for name, spec in final.items():
        if spec != KEEP and spec.get("rotate"):
            why = _check_rotatable(flat_weight(layers[name]).shape[1], bool(tied.get(name)))
            if why:
                warnings.warn(f"{name}: not rotated ({why})", stacklevel=2)
                spec.pop("rotate")
    collect = batches is not None and len(batches) > 0
    blocks = adapter.blocks()
    cache = BlockOutputCache(model, blocks) if collect and cache_blocks else None
    try:
        for block in tqdm(blocks, desc=f"{method.name} blocks", disable=not progress, leave=False):
            _quantize_block(adapter, block, final, method, batches if collect else None, tied, cache)
            if cache is not None:
                cache.finished(block.name)
    finally:
        if cache is not None:
            cache.close()
    # Only now: calibration above ran every block with torch's attention, as the float model does.
    from ..integrations import attention

    attention.enable(model)
    return model, {"layers": final}


def _quantize_block(adapter, block, final, method, batches, tied, cache) -> None:
    model = adapter.model
    names = [n for n in block.layers if n in final and final[n] != KEEP]
    if not names:
        return
    mods = {n: model.get_submodule(n) for n in block.layers if n in names}
    rotations = {n: rotation_for(n, flat_weight(m).shape[1]) for n, m in mods.items() if final[n].get("rotate")}
    static = any(final[n].get("act_granularity") == "tensor" for n in names)
    calls = (BlockCalls(model, block.name) if batches and method.block_objective and block.kind in ("encoder", "decoder")
             else None)
    with calls.recording() if calls is not None else nullcontext():
        stats = (capture_block_inputs(adapter, batches, mods, rotations, method.needs_hessian, method.max_samples,
                                      cache=cache)
                 if batches and (method.needs_calibration or static) else {})
    jobs = []
    for n, m in mods.items():
        w = flat_weight(m).to(torch.float32)
        if n in rotations:
            w = rotations[n].apply(w)
        inputs = stats.get(n)
        jobs.append(LayerJob(n, m, final[n], w, None if inputs is not None and inputs.range_only else inputs,
                             rotations.get(n), bool(tied.get(n))))
    results = method.quantize_block(jobs, calls)
    transforms = {}
    for job in jobs:
        res = results[job.name]
        job.spec.pop("smooth", None)
        job.spec.pop("shift", None)
        if res.input_mul is not None:
            job.spec["smooth"] = True
        if res.input_shift is not None:
            job.spec["shift"] = True
        act_q = None
        if job.spec.get("act_granularity") == "tensor":
            if job.name not in stats:
                raise ValueError(f"{job.name}: no calibration inputs reached this layer for its static activation range "
                                 f"(the calibration audio never ran it): use act_granularity 'token' or keep it")
            x = (res.inputs or stats[job.name]).range_samples()
            if res.input_shift is not None:
                x = x - res.input_shift
            if res.input_mul is not None:
                x = x * res.input_mul
            act_q = activation_range(x, job.spec["act_bits"], job.spec["act_symmetric"], method.act_range)
        rot = res.rotation or job.rotation
        transforms[job.name] = LayerTransform(rot.signs if rot else None, res.input_mul, act_q,
                                              (rot.left, rot.right) if rot is not None and rot.learned else None,
                                              res.input_shift)
    swap(model, {"layers": {j.name: j.spec for j in jobs}}, weights={n: r.weight for n, r in results.items()},
         transforms=transforms, progress=False, check_finite=False, runtime_attention=False)
