"""`quasr sweep CONFIG.yaml`: models x methods x bit configurations x datasets, the Edge-ASR table.

Every cell (one model quantized by one method at one configuration, evaluated on one dataset) is
appended to OUT/cells.jsonl as soon as it finishes; a rerun skips finished cells, so a sweep can be
stopped and resumed, or grown by editing the config (a last line cut short by a killed run is dropped
with a warning, and its cell rerun). After the cells run, OUT/table.md, table.csv,
wer_pivot.md (config x method), wer_by_dataset.md (method x config by dataset, for models run on
several), wer_vs_size.png and wer_vs_bops.png are rendered from every finished cell. With `--ray ADDRESS` the cells run as Ray tasks on a cluster (`pip install
quasr[ray]`; "local" starts a local instance); results still land in the same cells.jsonl on the
driver.

Config (YAML), every key but `models` optional:
    models: [whisper-tiny.en, moonshine-base]
    methods: [rtn, gptq, awq, hqq, smoothquant, omniquant, quarot, spinquant]
    configs: [W8A16, W4A16, W3A16, W2A16, W8A8, W4A8, W4A4, W3.5A16]
                                     # a fractional W: myQASR's mixed precision to that average
                                     # size (calibration clips), then the method on that plan
    datasets:                        # default: the English prompts of ../shared/speech
      - {name: en, data: PATH_OR_hf:NAME:SPLIT, language: en, limit: 100}
    calibration: {data: ..., limit: 32, language: en}   # default: the dataset's own source
    method_options: {omniquant: {steps: 100}}
    act_granularity: token           # or tensor (static ranges from the calibration audio)
    keep: []                         # globs of layers to keep in float
    only: {whisper-base: {datasets: [en]}}  # restrict a model to some datasets/configs/methods
    device: cpu
    batch_size: 8
Calibration clips never overlap evaluation clips. By default each dataset calibrates on its own
source (the clips left after its evaluation set), in its own language: the model is quantized anew
per dataset, as myQASR personalises. A `calibration: {data: ...}` source is shared (give its
`language` too when the datasets' languages differ): it leaves out every dataset's evaluation clips, and each model x method x config is quantized once and evaluated
on every dataset (rows record `calibration_data` and `calibration_language`).
"""

from __future__ import annotations

import csv
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..schema import (ANY, BOOL, COUNT, NUMBER, POSITIVE_INT, RECORD_FIX, STRING, TEXT, Fields, InputError, ListOf,
                      MapOf, append_json_line, check, describe, error_at, read_json_lines, read_text)

_NAMES = ListOf(TEXT, "a list of names")
# The config file's shape; what the names mean (methods, configurations) is checked by validate().
CONFIG_SCHEMA = Fields(
    "a mapping of settings",
    required={"models": ListOf(TEXT, "a list of model names", min_items=1)},
    optional={
        "methods": ListOf(TEXT, "a list of method names"),
        "configs": ListOf(TEXT, "a list of configurations such as W4A16"),
        "datasets": ListOf(Fields("a mapping that needs `name` and `data`", required={"name": TEXT, "data": TEXT},
                                  optional={"language": TEXT.or_null(), "limit": POSITIVE_INT.or_null()}),
                           "a list of datasets, each {name: ..., data: ...}"),
        "calibration": Fields("a mapping {data: ..., language: ..., limit: ...}",
                              optional={"data": TEXT, "language": TEXT.or_null(), "limit": POSITIVE_INT}),
        "method_options": MapOf(MapOf(ANY, "a mapping of option: value"),
                                "a mapping of method: {option: value}"),
        "act_granularity": TEXT,
        "keep": ListOf(TEXT, "a list of layer-name globs"),
        "only": MapOf(Fields("a mapping of some of datasets, configs, methods",
                             optional={"datasets": _NAMES, "configs": _NAMES, "methods": _NAMES}),
                      "a mapping of model: {datasets: [...], configs: [...], methods: [...]}"),
        "device": TEXT,
        "batch_size": POSITIVE_INT,
        "include_float": BOOL,
    })
CONFIG_KEYS = set(CONFIG_SCHEMA.known)

# A finished cell's row as read back from cells.jsonl: what resuming and the tables need of it.
CELL_ROW = Fields(
    "a JSON object with a finished cell's results",
    required={"model": TEXT, "method": TEXT, "config": STRING, "dataset": TEXT, "n_clips": COUNT, "size_mb": NUMBER,
              "gbops_per_audio_s": NUMBER, "mem_io_mb_per_audio_s": NUMBER, "rtf": NUMBER},
    optional={"wer": NUMBER.or_null()},
    other_keys=True)


@dataclass(frozen=True)
class Cell:
    model: str
    method: str  # "float" for the unquantized baseline
    config: str  # "" for float
    dataset: str

    @property
    def key(self) -> str:
        return f"{self.model}|{self.method}|{self.config}|{self.dataset}"

    @staticmethod
    def key_of(row: dict) -> str:
        """The key of the cell a result row belongs to."""
        return Cell(row["model"], row["method"], row["config"], row["dataset"]).key


def _yaml_problem(exc: Exception) -> str:
    """Where and what a YAML error is, on one line."""
    import yaml

    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        what = ", ".join(p for p in (exc.context, exc.problem) if p)
        return f" at line {mark.line + 1}, column {mark.column + 1}: {what}"
    return f": {' '.join(str(exc).split())}"


def _all_methods() -> list[str]:
    from ..methods import METHODS

    return list(METHODS)


DEFAULT_DATASET = "en"  # the name of the default speech set, when a config names no datasets


@dataclass
class SweepConfig:
    models: list[str]
    methods: list[str] = field(default_factory=_all_methods)
    configs: list[str] = field(default_factory=lambda: ["W8A16", "W4A16", "W3A16", "W2A16", "W8A8", "W4A8", "W4A4"])
    datasets: list[dict] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    method_options: dict = field(default_factory=dict)
    act_granularity: str = "token"
    keep: list[str] = field(default_factory=list)
    only: dict = field(default_factory=dict)
    device: str = "cpu"
    batch_size: int = 8
    include_float: bool = True

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        import yaml

        text = read_text(Path(path), "sweep config")
        try:
            raw = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date such as 2024-13-01
            raise InputError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
        if not isinstance(raw, dict) or not raw.get("models"):
            got = ("the file is empty" if raw is None else "`models` is missing or empty" if isinstance(raw, dict)
                   else f"got {describe(raw)}")
            raise InputError(f"{path}: a sweep config is a mapping with at least `models: [...]`; {got}")
        raw = {k: v for k, v in raw.items() if v is not None}  # `keep:` with nothing after it: the default
        cfg = cls(**check(CONFIG_SCHEMA, raw, str(path), "the config"))
        cfg.validate(str(path))
        return cfg

    def validate(self, source: str = "sweep") -> None:
        """What the names in a config (of the right shape: CONFIG_SCHEMA) mean: known methods, valid
        configurations, `only` about models and datasets of the sweep."""
        from ..methods import METHODS, parse_config
        from ..ranges import ACT_GRANULARITIES

        def known_methods(key, names):
            for i, m in enumerate(names):
                if m not in METHODS:
                    raise error_at(source, f"{key}[{i}]", f"is an unknown method {m!r}; choose from {', '.join(METHODS)}")

        def valid_configs(key, configs):
            for i, c in enumerate(configs):
                try:
                    parse_config(c)
                except ValueError as exc:
                    raise error_at(source, f"{key}[{i}]", f"is invalid: {exc}") from None

        known_methods("methods", self.methods)
        valid_configs("configs", self.configs)
        if self.act_granularity not in ACT_GRANULARITIES:
            raise error_at(source, "act_granularity", f"must be one of {ACT_GRANULARITIES}, got {self.act_granularity!r}")
        names = [d["name"] for d in self.datasets] or [DEFAULT_DATASET]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise error_at(source, f"datasets[{i}].name", f"{name!r} is given twice: dataset names must differ")
        for model, only in self.only.items():
            if model not in self.models:
                raise error_at(source, ("only", model), "is not one of `models`")
            for i, name in enumerate(only.get("datasets", [])):
                if name not in names:
                    raise error_at(source, ("only", model, "datasets", i), f"{name!r} is not one of the datasets' names")
            known_methods(f"only.{model}.methods", only.get("methods", []))
            valid_configs(f"only.{model}.configs", only.get("configs", []))
        for name in self.method_options:
            if name not in METHODS:
                raise error_at(source, ("method_options", name), f"is not a method; choose from {', '.join(METHODS)}")
            try:
                self.method(name)
            except ValueError as exc:
                raise error_at(source, ("method_options", name), f"is invalid: {exc}") from None
        if not self.datasets:  # last, so that a mistake in the config is named before missing data
            from ..data import default_data

            if not default_data():
                raise InputError(f"{source}: no `datasets` given and ../shared/speech not found: add "
                                 "datasets: [{name: NAME, data: MANIFEST_OR_DIR}]")
            self.datasets = [{"name": DEFAULT_DATASET, "data": default_data(), "language": "en", "limit": 100}]

    def method(self, name: str):
        """The method `name` as the sweep runs it: Hessian-weighted clipping unless its method_options
        say otherwise."""
        from ..methods import get_method

        return get_method(name, **{"clip": "hessian", **self.method_options.get(name, {})})

    def cells(self) -> list[Cell]:
        out = []
        for model in self.models:
            only = self.only.get(model, {})
            for d in self.datasets:
                if "datasets" in only and d["name"] not in only["datasets"]:
                    continue
                if self.include_float:
                    out.append(Cell(model, "float", "", d["name"]))
                for config in only.get("configs", self.configs):
                    for method in only.get("methods", self.methods):
                        out.append(Cell(model, method, config, d["name"]))
        return out


@functools.lru_cache(maxsize=16)
def _clips(source: str, language: str | None, limit: int | None) -> list:
    from ..data import load_clips

    return load_clips(source, language, limit)


def _split(cfg: SweepConfig, dataset: dict):
    """(evaluation clips, calibration clips, calibration language) for a dataset. Calibration clips
    never overlap evaluation clips: by default they come from the dataset's own source, after its
    evaluation clips; a shared `calibration: {data: ...}` leaves out every dataset's evaluation clips,
    so that all datasets calibrate on the same clips (and share one quantized model per cell)."""
    evals = _clips(dataset["data"], dataset.get("language"), dataset.get("limit"))
    cal = cfg.calibration
    language = cal.get("language", dataset.get("language"))
    if "data" in cal:
        source = cal["data"]
        exclude = {c.id for d in cfg.datasets for c in _clips(d["data"], d.get("language"), d.get("limit"))}
    else:
        source, exclude = dataset["data"], {c.id for c in evals}
    calib = [c for c in _clips(source, language, None) if c.id not in exclude][: cal.get("limit", 32)]
    if not calib:
        raise ValueError(f"sweep: no calibration clips left for dataset {dataset['name']!r}: every clip of {source}"
                         f"{f' in language {language!r}' if language else ''} is an evaluation clip; lower the "
                         "datasets' `limit` or give `calibration: {data: ...}` another source")
    return evals, calib, language


def quantization_groups(cfg: SweepConfig, cells: list[Cell]) -> list[list[Cell]]:
    """Cells that would quantize the same model identically (same model, method, config, calibration
    clips and language), in first-seen order: a group quantizes once and evaluates every dataset in
    it. With the default calibration (each dataset's own source) every group is one cell; with a
    shared `calibration: {data: ...}` the datasets share one quantized model."""
    splits = {d["name"]: _split(cfg, d) for d in cfg.datasets if any(c.dataset == d["name"] for c in cells)}
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        _, calib, language = splits[cell.dataset]
        key = (cell.model, cell.method, cell.config)
        if cell.method != "float":  # the float model has nothing to calibrate
            key += (tuple(c.id for c in calib), language)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


_CALIBRATION: dict[tuple, list] = {}
_CALIBRATORS: dict[tuple, object] = {}  # mixed-precision cells: the float model's measurements (mixed.Calibrator)


def _calibration_batches(cfg: SweepConfig, model_name: str, adapter, calib, language) -> list:
    """A model's calibration inputs (the float model's own transcripts, teacher-forced), built once
    per model and calibration set in this process: every cell starts from the same float model (a
    cell's quantize_seconds leave them out)."""
    key = (model_name, tuple(c.id for c in calib), language, cfg.batch_size, cfg.device)
    if key not in _CALIBRATION:
        _CALIBRATION.clear()  # one model's batches at a time: cells run model by model
        _CALIBRATION[key] = adapter.calibration_batches([c.waveform() for c in calib], cfg.batch_size, language)
    return _CALIBRATION[key]


def run_group(cfg: SweepConfig, cells: list[Cell]) -> Iterator[dict]:
    """Quantize once for cells of one quantization group (see `quantization_groups`) and evaluate
    each cell's dataset; yields each cell's row, its per-clip transcripts included, as it finishes."""
    import torch

    from ..adapters import get_adapter
    from ..evaluate import evaluate
    from ..methods import config_plan, is_mixed, parse_config, quantize
    from ..models import load_model

    first = cells[0]
    if any((c.model, c.method, c.config) != (first.model, first.method, first.config) for c in cells):
        raise ValueError(f"run_group: cells {[c.key for c in cells]} do not share a model, method and config")
    datasets = {d["name"]: d for d in cfg.datasets}
    splits = {c.dataset: _split(cfg, datasets[c.dataset]) for c in cells}
    _, calib, cal_language = splits[first.dataset]
    if first.method != "float" and any(
            [x.id for x in s[1]] != [x.id for x in calib] or s[2] != cal_language for s in splits.values()):
        raise ValueError(f"run_group: cells {[c.key for c in cells]} calibrate on different clips")
    model, processor = load_model(first.model, device=cfg.device)
    common = {"model": first.model, "method": first.method, "config": first.config,
              "n_calibration_clips": 0, "quantize_seconds": 0.0}
    torch.manual_seed(0)
    if first.method != "float":
        bits, group, act = parse_config(first.config)
        common.update(w_bits=bits, group_size=group, a_bits=act,
                      calibration_data=cfg.calibration.get("data", datasets[first.dataset]["data"]),
                      calibration_language=cal_language)
        method = cfg.method(first.method)
        # every setting the method ran with, defaults included: a row stays readable when defaults change
        common["method_options"] = {"clip": method.clip, "act_range": method.act_range,
                                    **{k: getattr(method, k) for k in method.options()}}
        adapter = get_adapter(model, processor)
        batches = _calibration_batches(cfg, first.model, adapter, calib, cal_language)
        start = time.perf_counter()
        if is_mixed(bits):  # myQASR's allocation to the size of `bits` on average, then the method
            from ..allocation.mixed import Calibrator, quantize_to_budget

            g = None if group == -1 else group
            calibrator = Calibrator(model, processor, batches, group_size=g)
            # the float model's sensitivity, measured once per model and calibration set in this process
            key = (first.model, tuple(c.id for c in calib), cal_language, g, cfg.batch_size, cfg.device)
            if key in _CALIBRATORS:
                calibrator.reuse(_CALIBRATORS[key])
            else:
                _CALIBRATORS.clear()
                _CALIBRATORS[key] = calibrator
            res = quantize_to_budget(model, processor, average_bits=bits, allocation="myqasr", group_size=g,
                                     keep=tuple(cfg.keep), method=method, act_bits=act,
                                     act_granularity=cfg.act_granularity, calibrator=calibrator)
            common["bits_histogram"] = res.allocation.summary()["bits_histogram"]
        else:
            plan = config_plan(model, first.config, tuple(cfg.keep), cfg.act_granularity)
            quantize(adapter, plan, batches, method, progress=False)
        common.update(quantize_seconds=time.perf_counter() - start, n_calibration_clips=len(calib))
    else:
        common.update(w_bits=32, group_size=None, a_bits=32)
    for cell in cells:
        dataset = datasets[cell.dataset]
        r = evaluate(model, processor, splits[cell.dataset][0], dataset.get("language"), cfg.batch_size,
                     progress=False)
        yield {**common, "dataset": cell.dataset, "language": dataset.get("language"), **r}


def _run_group_rows(cfg: SweepConfig, cells: list[Cell]) -> list[dict]:
    return list(run_group(cfg, cells))


def _upgrade_row(r: dict) -> dict:
    """A row written before rotation BOPs were split out (every online rotation then counted at 16 x 16
    bits) gets today's accounting, recomputed exactly from its rotation MACs: QuaRot's Hadamard factors
    at 1 x 16 bits (entries +-1), SpinQuant's learned ones at 16 x 16 (docs/METRICS.md)."""
    rot = r.get("rotation_gmacs_per_audio_s")
    if rot is None or "rotation_gbops_per_audio_s" in r:
        return r
    from ..metrics import FLOAT_BITS, HADAMARD_BITS

    bits = FLOAT_BITS if r["method"] == "spinquant" else HADAMARD_BITS
    new = rot * bits * FLOAT_BITS
    return {**r, "rotation_gbops_per_audio_s": new, "gbops_per_audio_s": r["gbops_per_audio_s"] - rot * FLOAT_BITS ** 2 + new}


class Sweep:
    def __init__(self, cfg: SweepConfig, out: str | Path, log=print):
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.cells_path = self.out / "cells.jsonl"
        # per-clip reference and hypothesis of every cell, kept beside the rows so a loop or a dropped
        # sentence behind a cell's WER can be read; cells.jsonl stays one short line per cell
        self.transcripts_path = self.out / "transcripts.jsonl"

    def finished(self) -> dict[str, dict]:
        done = {}
        if self.cells_path.exists():
            for _, row in read_json_lines(self.cells_path, CELL_ROW, "sweep's finished cells", RECORD_FIX,
                                          cut_truncated_tail=True):
                r = _upgrade_row(row)
                done[Cell.key_of(r)] = r
        return done

    def _record(self, row: dict) -> None:
        row = dict(row)
        transcripts = row.pop("transcripts", None)
        if transcripts is not None:
            append_json_line(self.transcripts_path, {"cell": Cell.key_of(row), "transcripts": transcripts})
        append_json_line(self.cells_path, row)
        wer = "n/a" if row.get("wer") is None else f"{row['wer']:.2f}%"
        self.log(f"{row['model']} {row['method']} {row['config'] or 'float'} {row['dataset']}: WER {wer}, "
                 f"{row['size_mb']:.2f} MB, {row['gbops_per_audio_s']:.1f} GBOPs/s audio")

    def run(self, ray_address: str | None = None) -> list[dict]:
        done = self.finished()
        todo = [c for c in self.cfg.cells() if c.key not in done]
        self.log(f"sweep: {len(done)} cells finished, {len(todo)} to run")
        if ray_address:
            self._run_ray(todo, ray_address)
        else:
            for group in quantization_groups(self.cfg, todo):
                for row in run_group(self.cfg, group):
                    self._record(row)
        self.render()
        return list(self.finished().values())

    def _run_ray(self, todo: list[Cell], address: str) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'quasr[ray]'") from None
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 log_to_driver=False, include_dashboard=False)
        remote = ray.remote(_run_group_rows)
        pending = {remote.remote(self.cfg, g): g for g in quantization_groups(self.cfg, todo)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                for row in ray.get(ref):
                    self._record(row)

    def render(self) -> None:
        rows = [r for r in self.finished().values()]
        if not rows:
            return
        cols = ["model", "dataset", "method", "config", "wer", "n_clips", "size_mb", "gbops_per_audio_s",
                "rotation_gmacs_per_audio_s", "rotation_gbops_per_audio_s", "mem_io_mb_per_audio_s", "rtf", "quantize_seconds"]
        order = {c.key: i for i, c in enumerate(self.cfg.cells())}
        rows.sort(key=lambda r: order.get(Cell.key_of(r), 1 << 30))
        with (self.out / "table.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self._markdown(rows)
        self._pivot(rows)
        self._by_dataset(rows)
        self._plots(rows)

    @staticmethod
    def _by_model_and_dataset(rows: list[dict]):
        """(heading, rows) per model and dataset, in the rows' order."""
        for (model, dataset) in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
            sub = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
            yield f"### {model} on {dataset} ({max(r['n_clips'] for r in sub)} clips)", sub

    def _markdown(self, rows: list[dict]) -> None:
        lines = []
        for heading, sub in self._by_model_and_dataset(rows):
            lines += [heading, "",
                      "| method | config | WER % | size MB | GBOPs / s audio | of which rotation | "
                      "memory I/O MB / s audio | RTF |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for r in sub:
                wer = "n/a" if r.get("wer") is None else f"{r['wer']:.2f}"
                rot = r.get("rotation_gbops_per_audio_s")  # absent: a cell counted before rotations were
                if rot is None:
                    rot = "not counted" if r["method"] in ("quarot", "spinquant") else ""
                else:
                    rot = f"{rot:.1f}" if rot else ""
                lines.append(f"| {r['method']} | {r['config'] or 'fp32'} | {wer} | {r['size_mb']:.2f} | "
                             f"{r['gbops_per_audio_s']:.1f} | {rot} | {r['mem_io_mb_per_audio_s']:.1f} | {r['rtf']:.3f} |")
            lines.append("")
        (self.out / "table.md").write_text("\n".join(lines))

    def _pivot(self, rows: list[dict]) -> None:
        """wer_pivot.md: WER % per configuration (rows) x method (columns), Edge-ASR's layout; an
        empty cell is one not run yet."""
        lines = []
        for heading, sub in self._by_model_and_dataset(rows):
            methods = list(dict.fromkeys(r["method"] for r in sub if r["method"] != "float"))
            configs = list(dict.fromkeys(r["config"] for r in sub if r["method"] != "float"))
            wer = {(r["method"], r["config"]): r.get("wer") for r in sub}
            fp = next((r for r in sub if r["method"] == "float"), None)
            if fp and fp.get("wer") is not None:
                heading += f", float {fp['wer']:.2f}"
            lines += [heading, "", "| config | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
            for c in configs:
                cells = [("" if (m, c) not in wer else "n/a" if wer[(m, c)] is None else f"{wer[(m, c)]:.2f}")
                         for m in methods]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
            lines.append("")
        (self.out / "wer_pivot.md").write_text("\n".join(lines))

    def _by_dataset(self, rows: list[dict]) -> None:
        """wer_by_dataset.md, for models evaluated on more than one dataset: WER % per method x config
        (rows) and dataset (columns), float first; an empty cell is one not run yet."""
        lines = []
        for model in dict.fromkeys(r["model"] for r in rows):
            sub = [r for r in rows if r["model"] == model]
            datasets = list(dict.fromkeys(r["dataset"] for r in sub))
            if len(datasets) < 2:
                continue
            wer = {(r["method"], r["config"], r["dataset"]): r.get("wer") for r in sub}
            clips = {d: max(r["n_clips"] for r in sub if r["dataset"] == d) for d in datasets}
            lines += [f"### {model}", "", "| method | config | " + " | ".join(f"{d} ({clips[d]})" for d in datasets) + " |",
                      "|---|---|" + "---:|" * len(datasets)]
            for method, config in dict.fromkeys((r["method"], r["config"]) for r in sub):
                cells = [("" if (method, config, d) not in wer else "n/a" if wer[(method, config, d)] is None
                          else f"{wer[(method, config, d)]:.2f}") for d in datasets]
                lines.append(f"| {method} | {config or 'fp32'} | " + " | ".join(cells) + " |")
            lines.append("")
        if lines:
            (self.out / "wer_by_dataset.md").write_text("\n".join(lines))

    def _plots(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for x_key, label, fname in (("size_mb", "model size (MB)", "wer_vs_size.png"),
                                    ("gbops_per_audio_s", "GBOPs per second of audio", "wer_vs_bops.png")):
            fig, ax = plt.subplots(figsize=(7, 4.5))
            for (model, dataset, method) in dict.fromkeys((r["model"], r["dataset"], r["method"]) for r in rows):
                pts = [(r[x_key], r["wer"]) for r in rows if (r["model"], r["dataset"], r["method"]) == (model, dataset, method)
                       and r.get("wer") is not None]
                if pts:
                    xs, ys = zip(*sorted(pts))
                    ax.plot(xs, ys, "o-" if method != "float" else "k*", label=f"{model}/{dataset}: {method}", ms=5)
            ax.set_xlabel(label)
            ax.set_ylabel("WER (%)")
            ax.set_yscale("log")
            ax.set_xscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6, ncol=2)
            fig.tight_layout()
            fig.savefig(self.out / fname, dpi=120)
            plt.close(fig)
