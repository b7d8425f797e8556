"""`quasr sweep CONFIG.yaml`: models x methods x bit configurations x datasets, the Edge-ASR table.

Every cell (one model quantized by one method at one configuration, evaluated on one dataset) is
appended to OUT/cells.jsonl as soon as it finishes; a rerun skips finished cells, so a sweep can be
stopped and resumed, or grown by editing the config. After the cells run, OUT/table.md, table.csv,
wer_pivot.md (config x method), wer_vs_size.png and wer_vs_bops.png are rendered from every
finished cell. With `--ray ADDRESS` the cells run as Ray tasks on a cluster (`pip install
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
Calibration clips never overlap the evaluation clips of a cell (same source: they are drawn from
the clips left after the evaluation set).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_KEYS = {"models", "methods", "configs", "datasets", "calibration", "method_options", "act_granularity", "keep",
               "only", "device", "batch_size", "include_float"}


@dataclass(frozen=True)
class Cell:
    model: str
    method: str  # "float" for the unquantized baseline
    config: str  # "" for float
    dataset: str

    @property
    def key(self) -> str:
        return f"{self.model}|{self.method}|{self.config}|{self.dataset}"


def _all_methods() -> list[str]:
    from .methods import METHODS

    return list(METHODS)


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

        try:
            raw = yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict) or not raw.get("models"):
            raise ValueError(f"{path}: a sweep config is a mapping with at least `models: [...]`")
        unknown = set(raw) - CONFIG_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)} (known: {sorted(CONFIG_KEYS)})")
        cfg = cls(**raw)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        from .methods import METHODS, parse_config
        from .ranges import ACT_GRANULARITIES

        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"sweep: unknown method {m!r}; choose from {', '.join(METHODS)}")
        for c in self.configs:
            parse_config(c)
        if self.act_granularity not in ACT_GRANULARITIES:
            raise ValueError(f"sweep: act_granularity must be one of {ACT_GRANULARITIES}")
        if not self.datasets:
            from .cli import _default_data

            self.datasets = [{"name": "en", "data": _default_data(), "language": "en", "limit": 100}]
        for d in self.datasets:
            if not d.get("data") or not d.get("name"):
                raise ValueError(f"sweep: every dataset needs `name` and `data`, got {d}")

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


def _split(cfg: SweepConfig, dataset: dict):
    """(evaluation clips, calibration clips) for a dataset: disjoint."""
    from .data import load_clips

    evals = load_clips(dataset["data"], dataset.get("language"), dataset.get("limit"))
    cal = cfg.calibration
    source = cal.get("data", dataset["data"])
    pool = load_clips(source, cal.get("language", dataset.get("language")))
    eval_ids = {c.id for c in evals}
    calib = [c for c in pool if c.id not in eval_ids][: cal.get("limit", 32)]
    return evals, calib


_CALIBRATION: dict[tuple, list] = {}


def _calibration_batches(cfg: SweepConfig, cell: Cell, adapter, calib, language) -> list:
    """A model's calibration inputs (the float model's own transcripts, teacher-forced), built once
    per model and dataset in this process: every cell starts from the same float model (a cell's
    quantize_seconds leave them out)."""
    key = (cell.model, cell.dataset, tuple(c.id for c in calib), cfg.batch_size, cfg.device)
    if key not in _CALIBRATION:
        _CALIBRATION.clear()  # one model's batches at a time: cells run model by model
        _CALIBRATION[key] = adapter.calibration_batches([c.waveform() for c in calib], cfg.batch_size, language)
    return _CALIBRATION[key]


def run_cell(cfg: SweepConfig, cell: Cell) -> dict:
    """Quantize and evaluate one cell; returns its row (everything but transcripts)."""
    import torch

    from .adapters import get_adapter
    from .evaluate import evaluate
    from .methods import config_plan, get_method, is_mixed, parse_config, quantize
    from .models import load_model

    dataset = next(d for d in cfg.datasets if d["name"] == cell.dataset)
    evals, calib = _split(cfg, dataset)
    model, processor = load_model(cell.model, device=cfg.device)
    row = {"model": cell.model, "method": cell.method, "config": cell.config, "dataset": cell.dataset,
           "language": dataset.get("language"), "n_calibration_clips": 0, "quantize_seconds": 0.0}
    torch.manual_seed(0)
    if cell.method != "float":
        bits, group, act = parse_config(cell.config)
        row.update(w_bits=bits, group_size=group, a_bits=act)
        method = get_method(cell.method, clip="hessian", **cfg.method_options.get(cell.method, {}))
        # every setting the method ran with, defaults included: a row stays readable when defaults change
        row["method_options"] = {"clip": method.clip, "act_range": method.act_range,
                                 **{k: getattr(method, k) for k in method.options()}}
        adapter = get_adapter(model, processor)
        batches = _calibration_batches(cfg, cell, adapter, calib, dataset.get("language"))
        start = time.perf_counter()
        if is_mixed(bits):  # myQASR's allocation to the size of `bits` on average, then the method
            from .mixed import Calibrator, quantize_to_budget

            g = None if group == -1 else group
            res = quantize_to_budget(model, processor, average_bits=bits, allocation="myqasr", group_size=g,
                                     keep=tuple(cfg.keep), method=method, act_bits=act,
                                     act_granularity=cfg.act_granularity,
                                     calibrator=Calibrator(model, processor, batches, group_size=g))
            row["bits_histogram"] = res.allocation.summary()["bits_histogram"]
        else:
            plan = config_plan(model, cell.config, tuple(cfg.keep), cfg.act_granularity)
            quantize(adapter, plan, batches, method, progress=False)
        row.update(quantize_seconds=time.perf_counter() - start, n_calibration_clips=len(calib))
    else:
        row.update(w_bits=32, group_size=None, a_bits=32)
    r = evaluate(model, processor, evals, dataset.get("language"), cfg.batch_size, progress=False)
    row.update({k: v for k, v in r.items() if k != "transcripts"})
    return row


class Sweep:
    def __init__(self, cfg: SweepConfig, out: str | Path, log=print):
        self.cfg, self.out, self.log = cfg, Path(out), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.cells_path = self.out / "cells.jsonl"

    def finished(self) -> dict[str, dict]:
        done = {}
        if self.cells_path.exists():
            for line in self.cells_path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    done[Cell(r["model"], r["method"], r["config"], r["dataset"]).key] = r
        return done

    def _record(self, row: dict) -> None:
        with self.cells_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
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
            for cell in todo:
                self._record(run_cell(self.cfg, cell))
        self.render()
        return list(self.finished().values())

    def _run_ray(self, todo: list[Cell], address: str) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'quasr[ray]'") from None
        ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                 log_to_driver=False, include_dashboard=False)
        remote = ray.remote(run_cell)
        pending = {remote.remote(self.cfg, c): c for c in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                self._record(ray.get(ref))

    def render(self) -> None:
        rows = [r for r in self.finished().values()]
        if not rows:
            return
        cols = ["model", "dataset", "method", "config", "wer", "n_clips", "size_mb", "gbops_per_audio_s",
                "rotation_gmacs_per_audio_s", "mem_io_mb_per_audio_s", "rtf", "quantize_seconds"]
        order = {c.key: i for i, c in enumerate(self.cfg.cells())}
        rows.sort(key=lambda r: order.get(Cell(r["model"], r["method"], r["config"], r["dataset"]).key, 1 << 30))
        with (self.out / "table.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        self._markdown(rows)
        self._pivot(rows)
        self._plots(rows)

    @staticmethod
    def _by_model_and_dataset(rows: list[dict]):
        """(heading, rows) per model and dataset, in the rows' order."""
        for (model, dataset) in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
            sub = [r for r in rows if r["model"] == model and r["dataset"] == dataset]
            yield f"### {model} on {dataset} ({max(r['n_clips'] for r in sub)} clips)", sub

    def _markdown(self, rows: list[dict]) -> None:
        from .metrics import FLOAT_BITS

        lines = []
        for heading, sub in self._by_model_and_dataset(rows):
            lines += [heading, "",
                      "| method | config | WER % | size MB | GBOPs / s audio | of which rotation | "
                      "memory I/O MB / s audio | RTF |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]
            for r in sub:
                wer = "n/a" if r.get("wer") is None else f"{r['wer']:.2f}"
                rot = r.get("rotation_gmacs_per_audio_s")  # absent: a cell counted before rotations were
                if rot is None:
                    rot = "not counted" if r["method"] in ("quarot", "spinquant") else ""
                else:
                    rot = f"{rot * FLOAT_BITS ** 2:.1f}" if rot else ""  # rotations run at 16 x 16 bits
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
