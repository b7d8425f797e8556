"""Personalisation experiments (myQASR's three, on ../shared/speech or any manifest with the same
fields) and the budget sweep. Each writes a markdown table, a CSV and a PNG into its output folder,
plus `cells.jsonl`: one line per finished cell, so an interrupted run resumes where it stopped.

- language: calibrate on one language's prompts, WER on every language's held-apart prompts;
- gender: calibrate on F or M LibriSpeech clips, score held-apart clips of each gender by the WER of
  the quantized model's transcript against the *float model's own transcript* ("WER vs float": no
  transcripts exist for these clips);
- speaker: calibrate on one speaker's spoken digits, digit accuracy on every speaker's held-apart digits;
- sweep: WER against size for uniform, myqasr and optimal over several budgets, with the float line.

Calibration and evaluation clips never overlap: each group's clips are shuffled with a fixed seed,
the first `n_calib` calibrate and the next `n_eval` are evaluated. Every quantized row also has a
"uniform" baseline: the widest uniform bit width that fits the same budget, MSE clipping, no audio.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..allocation.allocate import MB, SizeModel
from ..allocation.mixed import Calibrator, quantize_to_budget
from ..data import Clip, load_clips
from ..evaluate import normalizer, transcribe, word_error_rate
from ..plan import model_size_bytes
from ..schema import (ANY, NUMBER, RECORD_FIX, STRING, TEXT, Fields, ListOf, MapOf, Rule, append_json_line, check,
                      read_json_lines, read_text)

EXPERIMENTS = ("language", "gender", "speaker", "sweep")


@dataclass
class Settings:
    budget_mb: float | None = None
    avg_bits: float | None = 3.5
    allocation: str = "myqasr"
    sensitivity: str = "median"
    error: str = "fisher"
    clip: str | None = None
    group_size: int | None = 128
    n_calib: int = 32
    n_eval: int = 40
    batch_size: int = 8
    seed: int = 0
    device: str = "cpu"


def split_groups(clips: list[Clip], key, n_calib: int, n_eval: int, seed: int = 0) -> dict[str, tuple[list[Clip], list[Clip]]]:
    """{group: (calibration clips, held-apart evaluation clips)}, disjoint, deterministic."""
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        g = key(c)
        if g is not None:
            groups.setdefault(g, []).append(c)
    out = {}
    for g in sorted(groups):
        members = list(groups[g])
        random.Random(f"{seed}:{g}").shuffle(members)
        if len(members) < n_calib + 1:
            raise ValueError(f"group {g!r} has {len(members)} clips: need more than n_calib={n_calib}")
        out[g] = (members[:n_calib], members[n_calib : n_calib + n_eval])
    return out


def digit_accuracy(refs: list[str], hyps: list[str]) -> float:
    """Percent of clips whose normalised transcript is exactly the spoken digit (Whisper's English
    normaliser turns "Two." and "2" alike into "2")."""
    norm = normalizer("en")
    return 100.0 * sum(norm(r).strip() == norm(h).strip() for r, h in zip(refs, hyps)) / len(refs)


# A finished cell as read back from a *_cells.jsonl file.
CELL_ROW = Fields("a JSON object with a finished cell's results",
                  required={"row": TEXT, "col": TEXT, "settings": MapOf(ANY, "a mapping of the run's settings")},
                  optional={"value": NUMBER.or_null(), "size_mb": NUMBER, "avg_bits": NUMBER,
                            "budget_mb": NUMBER.or_null()},
                  other_keys=True)


class _Cells:
    """Finished cells, appended as JSON lines; a rerun skips them (a last line cut short by a killed
    run is dropped with a warning, and its cell redone)."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.done: dict[tuple[str, str], dict] = {}
        if path.exists():
            for _, r in read_json_lines(path, CELL_ROW, "experiment's finished cells", RECORD_FIX,
                                        cut_truncated_tail=True):
                if r["settings"] == settings:
                    self.done[(r["row"], r["col"])] = r

    def add(self, row: str, col: str, **values) -> dict:
        r = {"row": row, "col": col, **values, "settings": self.settings}
        self.done[(row, col)] = r
        append_json_line(self.path, r)
        return r


# The float model's transcripts of each gender's evaluation clips, cached beside the results.
FLOAT_TRANSCRIPTS = MapOf(Fields("a mapping {ids: [...], texts: [...]}",
                                 required={"ids": ListOf(STRING, "a list of clip ids"),
                                           "texts": ListOf(STRING, "a list of transcripts")}),
                          "a mapping of group: {ids, texts}")


def _read_cache(path: Path, rule: Rule) -> dict:
    """A JSON cache quasr wrote, or {} (with a warning) when it is unreadable: it is only recomputed."""
    if not path.exists():
        return {}
    try:
        return check(rule, json.loads(read_text(path, "cache")), str(path), "the cache")
    except ValueError as exc:
        warnings.warn(f"{path}: ignored and recomputed ({exc})", stacklevel=2)
        return {}


class Experiment:
    def __init__(self, model_name: str, out: str | Path, settings: Settings, progress: bool = False, log=print):
        self.model_name, self.s, self.progress, self.log = model_name, settings, progress, log
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)

    # the float model loads on first use: after the experiment's data has been read and checked
    @functools.cached_property
    def _float(self):
        from ..models import load_model

        return load_model(self.model_name, device=self.s.device)

    @property
    def float_model(self):
        return self._float[0]

    @property
    def processor(self):
        return self._float[1]

    @functools.cached_property
    def size_model(self) -> SizeModel:
        return SizeModel(self.float_model, group_size=self.s.group_size)

    @functools.cached_property
    def float_size_mb(self) -> float:
        return model_size_bytes(self.float_model) / MB

    def budget_mb(self, avg_bits: float | None = None) -> float:
        if avg_bits is None and self.s.budget_mb is not None:
            return self.s.budget_mb
        return self.size_model.budget_for_average_bits(avg_bits or self.s.avg_bits) / MB

    def quantized(self, allocation: str, budget_mb: float, calibrator: Calibrator | None):
        model = copy.deepcopy(self.float_model)
        res = quantize_to_budget(model, self.processor, budget_mb, allocation=allocation,
                                 sensitivity=self.s.sensitivity, error=self.s.error,
                                 clip=self.s.clip if calibrator else "mse", group_size=self.s.group_size,
                                 calibrator=calibrator if allocation != "uniform" else None, seed=self.s.seed)
        return model, res

    def calibrator(self, clips: list[Clip], language: str | None) -> Calibrator:
        return Calibrator(self.float_model, self.processor, [c.waveform() for c in clips], language, self.s.batch_size,
                          self.s.group_size, progress=self.progress)

    def transcripts(self, model, clips: list[Clip], language: str | None) -> list[str]:
        return transcribe(model, self.processor, [c.waveform() for c in clips], language, self.s.batch_size, self.progress)

    # -- outputs ---------------------------------------------------------------------------------
    def write_matrix(self, name: str, title: str, metric: str, rows: list[str], cols: list[str], cells: _Cells,
                     notes: list[str], better: str) -> None:
        header = ["calibration \\ evaluation"] + cols + ["size MB", "avg bits"]
        table = []
        for r in rows:
            vals = [cells.done.get((r, c), {}).get("value") for c in cols]
            meta = next((cells.done[(r, c)] for c in cols if (r, c) in cells.done), {})
            table.append([r] + [None if v is None else round(v, 2) for v in vals]
                         + [round(meta.get("size_mb", float("nan")), 2), round(meta.get("avg_bits", float("nan")), 2)])
        with (self.out / f"{name}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(table)
        md = [f"### {title}", "", f"Metric: {metric} ({better} is better). " + " ".join(notes), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join("–" if v is None else str(v) for v in row) + " |" for row in table]
        (self.out / f"{name}.md").write_text("\n".join(md) + "\n")
        self._heatmap(name, title, metric, rows, cols, [[row[1 + i] for i in range(len(cols))] for row in table])

    def _heatmap(self, name, title, metric, rows, cols, values):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        v = np.array([[np.nan if x is None else x for x in r] for r in values], dtype=float)
        fig, ax = plt.subplots(figsize=(1.3 + 0.9 * len(cols), 1.0 + 0.45 * len(rows)))
        im = ax.imshow(v, cmap="viridis_r" if "WER" in metric else "viridis", aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i in range(v.shape[0]):
            for j in range(v.shape[1]):
                if np.isfinite(v[i, j]):
                    ax.text(j, i, f"{v[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xlabel("evaluated on")
        ax.set_ylabel("calibrated on")
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, label=metric)
        fig.tight_layout()
        fig.savefig(self.out / f"{name}.png", dpi=120)
        plt.close(fig)

    # -- the experiments -------------------------------------------------------------------------
    def personalisation(self, kind: str, data: str | Path) -> Path:
        s = self.s
        clips = load_clips(data)
        key = {"language": lambda c: c.language, "gender": lambda c: c.gender, "speaker": lambda c: c.speaker}[kind]
        groups = split_groups(clips, key, s.n_calib, s.n_eval, s.seed)
        budget = self.budget_mb()
        settings = {"model": self.model_name, "budget_mb": round(budget, 4), **{k: v for k, v in vars(s).items() if k != "budget_mb"}}
        cells = _Cells(self.out / f"{kind}_cells.jsonl", settings)
        cols = list(groups)
        lang = (lambda g: g) if kind == "language" else (lambda g: "en")
        refs: dict[str, list[str]] = {}

        def score(model, g):
            _, ev = groups[g]
            hyps = self.transcripts(model, ev, lang(g))
            if kind == "gender":
                return word_error_rate(refs[g], hyps, "en")[0]
            if kind == "speaker":
                return digit_accuracy([c.text for c in ev], hyps)
            return word_error_rate([c.text for c in ev], hyps, g)[0]

        def run_row(row, model, res):
            for g in cols:
                if (row, g) in cells.done:
                    continue
                t = time.perf_counter()
                v = score(model, g)
                size = res.allocation.size_bytes / MB if res else self.float_size_mb
                cells.add(row, g, value=v, n_eval=len(groups[g][1]), n_calib=res.n_calibration_clips if res else 0,
                          size_mb=size, avg_bits=res.allocation.average_bits if res else 32.0)
                self.log(f"{kind}: {row} -> {g}: {v:.2f} ({time.perf_counter() - t:.0f} s)")

        if kind == "gender":  # references: the float model's own transcripts of the evaluation clips
            cache = self.out / "gender_float_transcripts.json"
            stored = _read_cache(cache, FLOAT_TRANSCRIPTS)
            for g in cols:
                ids = [c.id for c in groups[g][1]]
                if stored.get(g, {}).get("ids") != ids or len(stored[g]["texts"]) != len(ids):
                    stored[g] = {"ids": ids, "texts": self.transcripts(self.float_model, groups[g][1], "en")}
                    cache.write_text(json.dumps(stored))
                refs[g] = stored[g]["texts"]
        else:
            run_row("float", self.float_model, None)
        uniform_row = "uniform (no calibration)"
        rows = (["float"] if kind != "gender" else []) + [uniform_row] + [f"{kind}={g}" for g in cols]
        if any((uniform_row, g) not in cells.done for g in cols):
            model, res = self.quantized("uniform", budget, None)
            run_row(uniform_row, model, res)
        for g in cols:
            row = f"{kind}={g}"
            if all((row, c) in cells.done for c in cols):
                continue
            model, res = self.quantized(s.allocation, budget, self.calibrator(groups[g][0], lang(g)))
            run_row(row, model, res)
        metric = {"language": "WER %", "gender": "WER vs float transcripts %", "speaker": "digit accuracy %"}[kind]
        n_eval = {g: len(groups[g][1]) for g in cols}
        notes = [f"{self.model_name}, budget {budget:.2f} MB, allocation {s.allocation} ({s.sensitivity}), "
                 f"{s.n_calib} calibration clips per group; evaluation clips per group: "
                 + ", ".join(f"{g} {n}" for g, n in n_eval.items()) + "."]
        self.write_matrix(kind, f"{self.model_name}: {kind} personalisation", metric, rows, cols, cells, notes,
                          "higher" if kind == "speaker" else "lower")
        return self.out / f"{kind}.md"

    def sweep(self, data: str | Path, avg_bits: list[float], allocations: list[str], language: str = "en") -> Path:
        s = self.s
        clips = load_clips(data, language)
        calib, ev = split_groups(clips, lambda c: "all", s.n_calib, s.n_eval, s.seed)["all"]
        settings = {"model": self.model_name, "language": language, **vars(s)}
        cells = _Cells(self.out / "sweep_cells.jsonl", settings)
        refs = [c.text for c in ev]

        def run(row, col, model, res):
            if (row, col) in cells.done:
                return
            t = time.perf_counter()
            wer = word_error_rate(refs, self.transcripts(model, ev, language), language)[0]
            size = res.allocation.size_bytes / MB if res else self.float_size_mb
            cells.add(row, col, value=wer, size_mb=size, avg_bits=res.allocation.average_bits if res else 32.0,
                      budget_mb=res.allocation.budget_bytes / MB if res else None, n_eval=len(ev),
                      n_calib=len(calib))
            self.log(f"sweep: {row} @ {col}: WER {wer:.2f}% at {size:.2f} MB ({time.perf_counter() - t:.0f} s)")

        run("float", "float", self.float_model, None)
        calibrator = None
        for a in allocations:
            for b in avg_bits:
                col = f"{b:g}"
                if (a, col) in cells.done:
                    continue
                if a != "uniform" and calibrator is None:
                    calibrator = self.calibrator(calib, language)
                model, res = self.quantized(a, self.budget_mb(b), calibrator if a != "uniform" else None)
                run(a, col, model, res)
        self._sweep_outputs(cells, avg_bits, allocations, len(ev), len(calib))
        return self.out / "sweep.md"

    def _sweep_outputs(self, cells, avg_bits, allocations, n_eval, n_calib):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cols = [f"{b:g}" for b in avg_bits]
        header = ["allocation"] + [f"{c} bits: WER % / MB" for c in cols]
        rows = []
        for a in allocations:
            rows.append([a] + [(f"{cells.done[(a, c)]['value']:.2f} / {cells.done[(a, c)]['size_mb']:.2f}"
                                if (a, c) in cells.done else "–") for c in cols])
        fl = cells.done.get(("float", "float"))
        with (self.out / "sweep.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["allocation", "target_avg_bits", "budget_mb", "size_mb", "avg_bits", "wer"])
            if fl:
                w.writerow(["float", "", "", round(fl["size_mb"], 3), 32, round(fl["value"], 3)])
            for a in allocations:
                for c in cols:
                    r = cells.done.get((a, c))
                    if r:
                        w.writerow([a, c, round(r["budget_mb"], 3), round(r["size_mb"], 3), round(r["avg_bits"], 3), round(r["value"], 3)])
        md = [f"### {self.model_name}: WER vs size budget", "",
              f"{n_eval} held-apart clips, {n_calib} calibration clips; budgets set at the size of each average "
              f"bit width; float: " + (f"{fl['value']:.2f}% WER at {fl['size_mb']:.2f} MB." if fl else "not measured."), "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        (self.out / "sweep.md").write_text("\n".join(md) + "\n")
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for a, marker in zip(allocations, "osd^v"):
            pts = sorted((cells.done[(a, c)]["size_mb"], cells.done[(a, c)]["value"]) for c in cols if (a, c) in cells.done)
            if pts:
                ax.plot(*zip(*pts), marker=marker, label=a)
        if fl:
            ax.axhline(fl["value"], color="black", linestyle="--", linewidth=1, label=f"float ({fl['size_mb']:.0f} MB)")
        ax.set_xlabel("model size (MB)")
        ax.set_ylabel("WER % (log scale)")
        # broken low-bit models reach hundreds of %: a log axis keeps the usable region readable
        ax.set_yscale("log" if all(r["value"] > 0 for r in cells.done.values()) else "symlog")
        ax.set_title(f"{self.model_name}: WER vs size ({n_eval} clips)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(self.out / "sweep.png", dpi=120)
        plt.close(fig)
