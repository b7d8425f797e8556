"""The `quasr` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from .allocation.allocate import ALLOCATIONS
from .allocation.sensitivity import ERRORS, SCORES
from .data import default_data
from .methods import METHODS
from .plan.schema import DEFAULT_GROUP_SIZE, default_group_size


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _group(value: str) -> int:
    if value in ("-1", "channel", "per-channel"):
        return -1
    g = _number(value, int, "a group size: give 32, 64, 128, ... or -1")
    if g <= 0 or g % 32:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 32 (32, 64, 128, ...) or -1 for "
                                         f"per-channel")
    return g


def _number(value: str, kind: type, what: str):
    try:
        return kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}") from None


def _positive_int(value: str) -> int:
    n = _number(value, int, "a whole number")
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _positive_float(value: str) -> float:
    import math

    x = _number(value, float, "a number")
    if not math.isfinite(x) or x <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {value}")
    return x


def _avg_bits(value: str) -> float:
    x = _positive_float(value)
    if not 2 <= x <= 8:
        raise argparse.ArgumentTypeError(f"an average width must lie in 2..8 bits, got {value}")
    return x


def _out_dir(value: str) -> Path:
    if not value.strip():
        raise argparse.ArgumentTypeError("is empty: give the folder to write, e.g. --out tiny-w4")
    return Path(value)


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bits", type=int, default=4, choices=range(2, 9), metavar="{2..8}", help="weight bits, 2-8 (default 4)")
    p.add_argument("--group-size", type=_group, default=None,
                   help=f"32, 64, 128 or -1 for per-channel (default: 64 at 2-4 bits, 128 at 5-8; "
                        f"{DEFAULT_GROUP_SIZE} for mixed precision)")
    p.add_argument("--symmetric", action="store_true", help="symmetric quantization (default asymmetric)")
    p.add_argument("--method", default="rtn", choices=list(METHODS),
                   help="PTQ method (default rtn); all but rtn/hqq need --calib audio")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method setting (repeatable), e.g. damp=0.1 for gptq, objective=block or let_shift=auto "
                        "for omniquant, steps=100; the method names its options when one is unknown")
    p.add_argument("--config", default=None, metavar="WxAy",
                   help="an Edge-ASR configuration (W8A16, W4A16, W3A16, W2A16, W8A8, W4A8, W4A4, or W<b>A<b>g<group>): "
                        "sets --bits, --group-size and --act-bits; a fractional W (W3.5A8) sets --avg-bits instead "
                        "(mixed precision, needs --calib)")
    p.add_argument("--act-bits", type=int, default=8, choices=[*range(2, 9), 16], metavar="{2..8,16}",
                   help="bits of each quantized layer's input activations, 2-8, or 16 for float activations "
                        "(default 8: int8 activations, which the CPU kernels multiply with integer dot products; "
                        "same WER as 16 on the English prompts, bench/RESULTS.md)")
    p.add_argument("--act-granularity", default="group", choices=["token", "tensor", "group"],
                   help="activation ranges: per token and weight group (default group), per token, or one static "
                        "range per tensor calibrated on --calib (tensor)")
    p.add_argument("--act-symmetric", action=argparse.BooleanOptionalAction, default=None,
                   help="symmetric activation ranges (default: symmetric for group, asymmetric otherwise)")
    p.add_argument("--clip", default=None, choices=["mse", "minmax", "cosine", "hessian"],
                   help="weight range: clip search by MSE, cosine, or error weighted by the calibration audio's input "
                        "second moments (hessian); min-max = none (default: hessian with --calib, else mse)")
    p.add_argument("--keep", action="append", default=[], metavar="GLOB", help="keep matching layers in float (repeatable)")


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mixed precision to a size budget (bits per layer chosen from calibration audio)")
    g.add_argument("--budget-mb", type=_positive_float, default=None, help="target size in MB (10^6 bytes), everything counted")
    g.add_argument("--avg-bits", type=_avg_bits, default=None, help="target the size of this average weight width instead")
    g.add_argument("--calib", default=None, help="unlabelled calibration audio: manifest, folder or hf:NAME:SPLIT")
    g.add_argument("--calib-limit", type=_positive_int, default=32, help="calibration clips to use (default 32)")
    g.add_argument("--calib-language", default=None, help="only calibration clips of this language")
    g.add_argument("--allocation", default="myqasr", choices=list(ALLOCATIONS), help="bit allocator (default myqasr)")
    g.add_argument("--sensitivity", default="median", choices=list(SCORES), help="myqasr's layer score (default median)")
    g.add_argument("--error", default="fisher", choices=list(ERRORS), help="optimal's error estimate (default fisher)")
    g.add_argument("--seed", type=int, default=0, help="seed of the shuffled ablation")


def _apply_config(args) -> None:
    if getattr(args, "act_symmetric", False) is None:
        args.act_symmetric = args.act_granularity == "group"
    if getattr(args, "config", None):
        from .methods import is_mixed, parse_config

        bits, group, args.act_bits = parse_config(args.config)
        given = getattr(args, "group_size", None)
        if given is not None and given != group:
            raise ValueError(f"--config {args.config} sets group {group} but --group-size says {given}: drop one, "
                             f"or put the group in the config (e.g. {args.config.split('g')[0]}g{given})")
        args.group_size = group
        if is_mixed(bits):  # W3.5A8: mixed precision to the size of 3.5 bits on average
            if getattr(args, "budget_mb", None) is not None:
                raise ValueError(f"--config {args.config} sets an average width; drop --budget-mb or use W<int>")
            args.avg_bits = bits
        else:
            args.bits = bits
    if getattr(args, "group_size", 0) is None:  # not given: by width (uniform) or the mixed-precision default
        mixed = getattr(args, "budget_mb", None) is not None or getattr(args, "avg_bits", None) is not None
        args.group_size = DEFAULT_GROUP_SIZE if mixed else default_group_size(args.bits)


def _method_options(args) -> dict:
    """--method-option KEY=VALUE pairs, values read as YAML scalars (0.1, true, block)."""
    import yaml

    out = {}
    for item in getattr(args, "method_option", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--method-option {item!r}: give KEY=VALUE, e.g. --method-option damp=0.1")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def _method(args, has_audio: bool):
    """--method with its --method-option settings; weight clipping --clip, by default Hessian-weighted
    when there is calibration audio."""
    from .methods import get_method

    return get_method(args.method, clip=args.clip or ("hessian" if has_audio else "mse"), **_method_options(args))


def _calibration_waves(args):
    from .data import load_clips

    if not getattr(args, "calib", None):
        return None
    return [c.waveform() for c in load_clips(args.calib, args.calib_language, args.calib_limit)]


def _quantize(model, processor, args):
    """Uniform plan (--bits/--group-size, activations --act-*) quantized with --method."""
    from .adapters import get_adapter
    from .methods import quantize, with_activations
    from .plan import uniform_plan

    plan = with_activations(uniform_plan(model, args.bits, args.group_size, args.symmetric, tuple(args.keep)),
                            args.act_bits, args.act_granularity, args.act_symmetric)
    calib = _calibration_waves(args)
    if args.clip == "hessian" and calib is None:
        raise ValueError("--clip hessian needs calibration audio: add --calib DATA (a manifest, a folder of audio, "
                         "or hf:NAME:SPLIT; no transcripts needed)")
    method = _method(args, calib is not None)
    if calib is None and (method.needs_calibration or args.act_granularity == "tensor" and args.act_bits != 16):
        raise ValueError(f"--method {args.method} with these options needs calibration audio: add --calib DATA "
                         f"(a manifest, a folder of audio, or hf:NAME:SPLIT; no transcripts needed)")
    quantize(get_adapter(model, processor), plan, calib, method, batch_size=args.batch_size,
             language=getattr(args, "calib_language", None), progress=sys.stderr.isatty())
    return model


def _quantize_to_budget(model, processor, args):
    from .allocation.mixed import quantize_to_budget

    calib = _calibration_waves(args)
    return quantize_to_budget(model, processor, args.budget_mb, calib, args.allocation, args.sensitivity, args.error,
                              args.clip, args.group_size, args.symmetric, tuple(args.keep), args.calib_language,
                              args.batch_size, args.avg_bits, args.seed, progress=sys.stderr.isatty(),
                              method=_method(args, calib is not None), act_bits=args.act_bits,
                              act_granularity=args.act_granularity, act_symmetric=args.act_symmetric)


def _summary(label: str, r: dict) -> str:
    wer = "n/a" if r.get("wer") is None else f"{r['wer']:.2f}%"
    line = (f"{label:<22} WER {wer:>7}  size {r['size_mb']:7.2f} MB  avg bits {r['avg_bits']:5.2f}  "
            f"{r['n_clips']} clips  {r['seconds']:.1f} s  RTF {r['rtf']:.3f}")
    faults = _fault_lines(r)
    return line + ("\n" + faults if faults else "")


def _fault_lines(r: dict) -> str:
    """'stopped early' / 'looped' counts against the labels and against the float transcripts."""
    def counts(f):
        ids = f["truncated"][:5] + f["looped"][:5]
        return (f"{f['n_truncated']} stopped early, {f['n_looped']} looped of {f['n_judged']} clips"
                + (f" ({', '.join(dict.fromkeys(ids))}{', ...' if f['n_truncated'] + f['n_looped'] > len(ids) else ''})"
                   if ids else ""))
    lines = []
    if "faults" in r:
        lines.append(f"  against the labels: {counts(r['faults'])}")
    if "vs_float" in r:
        v = r["vs_float"]
        dis = "n/a" if v["wer"] is None else f"{v['wer']:.2f}%"
        lines.append(f"  against the float model's transcripts: {dis} word disagreement, {counts(v)}")
    return "\n".join(lines)


def _refuse_quantized(model, name: str) -> None:
    """Quantizing packed layers again would save the same model under a new request: refuse."""
    from .nn import QuantConv1d, QuantLinear
    from .plan import average_bits

    if any(isinstance(m, (QuantLinear, QuantConv1d)) for m in model.modules()):
        source = ""
        plan_file = Path(name) / "quasr_plan.json"
        if plan_file.exists():
            source = json.loads(plan_file.read_text()).get("source") or ""
        hint = f" ({source!r})" if source else ""
        raise ValueError(f"{name} is already quantized (avg {average_bits(model):.2f} bits): its float weights are "
                         f"gone, so it cannot be quantized again; quantize its float source{hint} instead")


def cmd_quantize(args) -> int:
    from .models import load_model
    from .outputs import OutputFolder
    from .plan import average_bits, model_size_bytes
    from .serialize import write_quantized

    from .data import load_clips

    target = OutputFolder(args.out, args.overwrite)  # a bad --out or --eval fails here, before any work
    eval_clips = load_clips(args.eval, args.eval_language, args.eval_limit) if args.eval else None
    _apply_config(args)
    with target as stage:  # locked; the folder appears only when everything in it is written
        model, processor = load_model(args.model, device=args.device)
        _refuse_quantized(model, args.model)
        float_hyps = None
        if eval_clips and args.eval_float:  # the float model's transcripts, to judge the quantized ones by
            from .evaluate import transcribe

            float_hyps = transcribe(model, processor, [c.waveform() for c in eval_clips], args.eval_language,
                                    args.batch_size, sys.stderr.isatty())
        start = time.perf_counter()
        mixed = args.budget_mb is not None or args.avg_bits is not None
        if mixed:
            result = _quantize_to_budget(model, processor, args)
        else:
            _quantize(model, processor, args)
        meta = {"source": args.model, "method": args.method, "clip": args.clip or "mse", "act_bits": args.act_bits}
        if mixed:
            meta.update(result.settings, allocation=args.allocation, budget_mb=result.allocation.budget_bytes / 1e6)
        write_quantized(model, processor, stage, meta)
        out = {"out": str(args.out), "size_mb": model_size_bytes(model) / 1e6, "avg_bits": average_bits(model),
               "seconds": time.perf_counter() - start, "group_size": args.group_size, "method": args.method}
        if mixed:
            from .allocation.mixed import plot_bits

            result.save(stage / "allocation.json")
            plot_bits(result, stage / "bits.png", f"{args.model}: {args.allocation}")
            out.update(budget_mb=result.allocation.budget_bytes / 1e6, allocation=args.allocation,
                       n_calibration_clips=result.n_calibration_clips)
        else:
            out["bits"] = args.bits
    if eval_clips:
        from .evaluate import evaluate

        r = evaluate(model, processor, eval_clips, args.eval_language, args.batch_size, progress=sys.stderr.isatty(),
                     against=float_hyps)
        out.update(wer=r["wer"], n_eval_clips=r["n_clips"], n_scored=r["n_scored"])
        out.update({k: r[k] for k in ("faults", "vs_float") if k in r})
    if args.json:
        print(json.dumps(out))
    else:
        line = f"saved {args.out}: "
        if mixed:
            line += f"budget {out['budget_mb']:.2f} MB, achieved {out['size_mb']:.2f} MB"
        else:
            line += f"{out['size_mb']:.2f} MB"
        line += f", avg {out['avg_bits']:.2f} bits"
        if args.eval:
            wer = "n/a (no transcripts)" if out["wer"] is None else f"{out['wer']:.2f}% on {out['n_scored']} clips"
            line += f", WER {wer}"
        print(line + f" ({out['seconds']:.1f} s)")
        if args.eval:
            print(_fault_lines(out))
    return 0


def _load_data(args):
    from .data import load_clips

    data = args.data or default_data()
    if not data:
        raise SystemExit("quasr: no --data given and ../shared/speech not found; pass --data MANIFEST_OR_DIR")
    return load_clips(data, args.language, args.limit)


def _float_transcripts(args, clips) -> list[str] | None:
    """The float model's transcripts for `quasr eval --float` (None: no float model to compare with)."""
    from .evaluate import transcribe
    from .models import load_model

    source = args.float_model
    if source == "none":
        return None
    if source == "auto":
        plan_file = Path(args.model) / "quasr_plan.json"
        source = json.loads(plan_file.read_text()).get("source") if plan_file.is_file() else None
        if not source:
            return None
        try:
            model, processor = load_model(source, device=args.device)
        except Exception as exc:  # auto: the source may have moved; say so and go on
            print(f"quasr: note: not comparing with the float model {source!r} (it does not load: {exc}); "
                  f"pass --float MODEL", file=sys.stderr)
            return None
    else:
        model, processor = load_model(source, device=args.device)
    from .nn import QuantConv1d, QuantLinear

    if any(isinstance(m, (QuantLinear, QuantConv1d)) for m in model.modules()):
        raise ValueError(f"--float {source}: that model is quantized; pass its float source (a built-in name, "
                         f"HF folder or hub id), or --float none")
    return transcribe(model, processor, [c.waveform() for c in clips], args.language, args.batch_size,
                      sys.stderr.isatty())


def cmd_eval(args) -> int:
    from .evaluate import evaluate
    from .models import load_model

    clips = _load_data(args)
    float_hyps = _float_transcripts(args, clips)
    model, processor = load_model(args.model, device=args.device)
    r = evaluate(model, processor, clips, args.language, args.batch_size, progress=sys.stderr.isatty(),
                 against=float_hyps)
    if not args.transcripts:
        r.pop("transcripts")
    r["model"] = args.model
    print(json.dumps(r) if args.json else _summary(args.model, r))
    return 0


def cmd_export(args) -> int:
    """A model for another runtime: whisper.cpp's ggml file (export/ggml.py) or ONNX Runtime graphs (export/onnx.py)."""
    from .models import load_model
    from .plan import model_size_bytes

    out = Path(args.out)
    if args.format == "ggml":
        if args.accuracy_level is not None:
            raise ValueError("--accuracy-level is for --format onnx (MatMulNBits); whisper.cpp has no such setting")
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder: give the model file to write, e.g. {out / 'ggml-model.bin'}")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--out {out} exists: pass --overwrite to replace it")
    elif args.ggml_type is not None:
        raise ValueError("--ggml-type is for --format ggml; an ONNX export keeps each layer's own bits (see --help)")
    model, processor = load_model(args.model)
    if args.format == "ggml":
        from .export import export_ggml

        report = export_ggml(model, processor, out, args.ggml_type)
    else:
        from .export import export_onnx

        level = args.accuracy_level or "auto"
        report = export_onnx(model, processor, out, level if level == "auto" else int(level), overwrite=args.overwrite)
    print(f"{out}: {args.model} ({model_size_bytes(model) / 1e6:.2f} MB in quasr)")
    print("\n".join(report.lines()))
    return 0


def cmd_transcribe(args) -> int:
    from .audio import load_audio
    from .evaluate import transcribe
    from .models import load_model

    waves = [load_audio(a) for a in args.audio]
    model, processor = load_model(args.model, device=args.device)
    texts = transcribe(model, processor, waves, args.language, args.batch_size)
    if args.json:
        print(json.dumps([{"audio": a, "text": t} for a, t in zip(args.audio, texts)]))
    else:
        for a, t in zip(args.audio, texts):
            print(f"{a}\t{t}")
    return 0


def cmd_demo(args) -> int:
    """Float vs quantized whisper-tiny.en (or --model) on the English prompts (or --data)."""
    from .evaluate import evaluate
    from .models import load_model

    clips = _load_data(args)
    results = {}
    model, processor = load_model(args.model, device=args.device)
    _refuse_quantized(model, args.model)
    results["float"] = evaluate(model, processor, clips, args.language, args.batch_size, progress=sys.stderr.isatty())
    print(_summary(f"{args.model} float", results["float"]), flush=True)
    _apply_config(args)
    _quantize(model, processor, args)
    label = f"{args.bits}-bit {args.method} g{args.group_size}"
    results[label] = evaluate(model, processor, clips, args.language, args.batch_size, progress=sys.stderr.isatty())
    print(_summary(label, results[label]), flush=True)
    if args.json:
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "transcripts"} for k, v in results.items()}))
    return 0


def _speech_set(name: str) -> str:
    default = default_data()
    if not default:
        raise ValueError("no --data given and ../shared/speech not found; pass --data MANIFEST_OR_DIR")
    return str(Path(default).parents[1] / name / "manifest.jsonl")


def cmd_experiment(args) -> int:
    from .experiments.personalisation import Experiment, Settings

    settings = Settings(budget_mb=args.budget_mb, avg_bits=args.avg_bits, allocation=args.allocation,
                        sensitivity=args.sensitivity, error=args.error, clip=args.clip, group_size=args.group_size,
                        n_calib=args.calib_clips, n_eval=args.eval_clips, batch_size=args.batch_size, seed=args.seed,
                        device=args.device)
    exp = Experiment(args.model, args.out, settings, progress=sys.stderr.isatty(),
                     log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.kind == "sweep":
        path = exp.sweep(args.data or _speech_set("prompts"), args.sweep_bits, args.allocations, args.language or "en")
    else:
        default = {"language": "prompts", "gender": "librispeech", "speaker": "digits"}[args.kind]
        path = exp.personalisation(args.kind, args.data or _speech_set(default))
    print(path.read_text())
    return 0


def cmd_info(args) -> int:
    import torch

    from . import __version__
    from .adapters import adapter_class, supported_model_types
    from .models import BUILTIN
    from .ops import native_status

    print(f"quasr {__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; {native_status()}")
    print("families (HF model_type): " + ", ".join(f"{adapter_class(t).family} ({t})" for t in supported_model_types()))
    print("built-in models: " + ", ".join(f"{n} [{b.family}]" for n, b in sorted(BUILTIN.items())))
    from .kernels import BACKENDS, machine_kind, table_path

    print("backends: " + "; ".join(f"{b.name} ({'available' if b.available() else b.status()}: "
                                   f"{', '.join(b.paths) or 'no paths'})" for b in BACKENDS.values()))
    kind = machine_kind(args.device)
    table = table_path(kind)
    print(f"dispatch: machine kind {kind}, table {table if table.exists() else 'none (the default rule)'}")
    if args.model:
        _print_dispatch(args)
    return 0


def _print_dispatch(args) -> None:
    """For each packed layer of a model: its shape and the backend:path each M would run on."""
    from .kernels import choose
    from .models import load_model
    from .nn import QuantConv1d, QuantLinear

    model, _ = load_model(args.model, device=args.device)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv1d))]
    if not layers:
        print(f"{args.model} has no quantized layers (quantize it first)")
        return
    print(f"{args.model}: {len(layers)} quantized layers")
    for name, m in layers:
        n = m.packed.shape[0]
        picks = "  ".join(f"M={mm}: {choose(args.device, m.bits, m.group_size, mm, n, m.packed_in_features)}"
                          for mm in args.m)
        print(f"  {name}  {m.bits}-bit g{m.group_size} N={n} K={m.packed_in_features}  {picks}")


def _add_device_arg(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu (native kernels) or cuda[:N] (default cpu)")


def cmd_sweep(args) -> int:
    from .experiments.sweep import Sweep, SweepConfig

    Sweep(SweepConfig.load(args.config), args.out).run(args.ray)
    print(f"table: {args.out / 'table.md'}")
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one `quasr: warning: ...` line (not Python's file:line: UserWarning: form)."""
    return f"quasr: warning: {message}\n"


class _Parser(argparse.ArgumentParser):
    """Argument errors in the same one-line form as every other error (and exit code 2)."""

    def error(self, message):
        self.exit(2, f"quasr: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="quasr", description="Low-bit PTQ for speech recognition models")
    sub = ap.add_subparsers(dest="command", required=True)

    def data_args(p):
        p.add_argument("--data", help="manifest .jsonl, folder of audio (+ .txt transcripts), or hf:NAME[:CONFIG]:SPLIT "
                                      "(default: ../shared/speech/prompts)")
        p.add_argument("--language", default=None, help="language code: filters the data, sets Whisper's language")
        p.add_argument("--limit", type=_positive_int, default=None, help="use the first N clips")
        p.add_argument("--batch-size", type=_positive_int, default=8)
        _add_device_arg(p)
        p.add_argument("--json", action="store_true", help="print figures as one JSON object")

    p = sub.add_parser("quantize", help="quantize a model and save it (uniform --bits, or mixed precision to --budget-mb)")
    p.add_argument("model")
    _add_quant_args(p)
    _add_budget_args(p)
    p.add_argument("--out", required=True, type=_out_dir,
                   help="folder to write (new, empty, or an earlier quasr output, which is replaced)")
    p.add_argument("--overwrite", action="store_true", help="replace --out even if it holds files quasr did not write")
    p.add_argument("--eval", default=None, help="also measure WER on this data (manifest, folder or hf:...)")
    p.add_argument("--eval-language", default=None)
    p.add_argument("--eval-limit", type=_positive_int, default=None)
    p.add_argument("--eval-float", action=argparse.BooleanOptionalAction, default=True,
                   help="with --eval, also transcribe the clips with the float model first and report the "
                        "quantized model's disagreement, early stops and loops against it (default on)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    _add_device_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("eval", help="WER, size, latency of a model (built-in name, HF dir, ONNX export dir, hub id) "
                                    "or a quantized directory")
    p.add_argument("model")
    data_args(p)
    p.add_argument("--transcripts", action="store_true", help="include per-clip transcripts in --json output")
    p.add_argument("--float", dest="float_model", default="auto", metavar="MODEL",
                   help="a float model to judge the transcripts against (disagreement, early stops, loops): "
                        "auto (default) = a quantized directory's recorded source, if it loads; none = skip")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("model")
    p.add_argument("audio", nargs="+")
    p.add_argument("--language", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=8)
    _add_device_arg(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("demo", help="float vs quantized on real speech (the `make demo` job)")
    p.add_argument("--model", default="whisper-tiny.en", help="any model `quasr eval` takes (default whisper-tiny.en)")
    _add_quant_args(p)
    data_args(p)
    p.set_defaults(func=cmd_demo, language="en")

    p = sub.add_parser("experiment", help="personalisation matrices (language, gender, speaker) and the budget sweep: "
                                          "markdown + CSV tables and PNG plots in --out; resumable")
    p.add_argument("kind", choices=["language", "gender", "speaker", "sweep"])
    p.add_argument("model")
    p.add_argument("--out", required=True, type=_out_dir)
    p.add_argument("--data", default=None, help="manifest with language/gender/speaker fields "
                                                "(default: the matching ../shared/speech set)")
    p.add_argument("--language", default=None, help="sweep: language of the evaluation prompts (default en)")
    p.add_argument("--budget-mb", type=_positive_float, default=None)
    p.add_argument("--avg-bits", type=_avg_bits, default=3.5, help="budget as the size of this average width (default 3.5)")
    p.add_argument("--allocation", default="myqasr", choices=list(ALLOCATIONS))
    p.add_argument("--allocations", nargs="+", default=["uniform", "myqasr", "optimal"], choices=list(ALLOCATIONS),
                   help="sweep: allocators to compare")
    p.add_argument("--sweep-bits", nargs="+", type=_avg_bits, default=[2.5, 3.0, 3.5, 4.0, 5.0],
                   help="sweep: budgets as average bit widths")
    p.add_argument("--sensitivity", default="median", choices=list(SCORES))
    p.add_argument("--error", default="fisher", choices=list(ERRORS))
    p.add_argument("--clip", default=None, choices=["mse", "minmax", "cosine", "hessian"])
    p.add_argument("--group-size", type=_group, default=128)
    p.add_argument("--calib-clips", type=_positive_int, default=32, help="calibration clips per group (default 32)")
    p.add_argument("--eval-clips", type=_positive_int, default=40, help="held-apart evaluation clips per group (default 40)")
    p.add_argument("--batch-size", type=_positive_int, default=8)
    _add_device_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("sweep", help="Edge-ASR benchmark: models x PTQ methods x bit configs x datasets from a YAML "
                                     "config; resumable (cells.jsonl), table.md/csv and WER-vs-size/BOPs plots in --out")
    p.add_argument("config", type=Path)
    p.add_argument("--out", required=True, type=_out_dir)
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run cells as Ray tasks on this cluster ('local' starts one here); needs quasr[ray]")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("export", help="write a model for another runtime: whisper.cpp's model file (--format ggml) "
                                      "or ONNX Runtime graphs with MatMulNBits layers (--format onnx)")
    p.add_argument("model", help="a quasr checkpoint (or a float model), built-in name or folder")
    p.add_argument("--format", required=True, choices=["ggml", "onnx"],
                   help="ggml: whisper.cpp's model file (Whisper only); onnx: a folder of ONNX graphs (Whisper, Moonshine: "
                        "encoder and decoder with KV cache; Wav2Vec2: one graph) that quasr.export.OnnxModel runs")
    p.add_argument("--out", required=True, help="the file (ggml) or folder (onnx) to write")
    p.add_argument("--ggml-type", default=None, choices=["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f16"],
                   help="the one type whisper.cpp stores every weight matrix in (default: the smallest that holds "
                        "every quantized layer's codes exactly)")
    p.add_argument("--accuracy-level", default=None, choices=["auto", "0", "1", "2", "3", "4"],
                   help="MatMulNBits' accuracy_level for every layer (onnx; 4: ORT's int8-activation kernel, 0: float); "
                        "default auto: 4 where quasr runs the layer with int8 activations, else 0")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="versions, kernel backends, and what the dispatcher picks for a model's layers")
    p.add_argument("model", nargs="?", default=None, help="a quantized model: list each layer's kernel choice")
    p.add_argument("--m", type=_positive_int, nargs="+", default=[1, 1500],
                   help="rows per call to show choices for (default 1 = a decoder step, 1500 = Whisper's encoder)")
    _add_device_arg(p)
    p.set_defaults(func=cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argument error already printed as one line
        return int(exc.code or 0)
    _quiet_transformers()
    plain_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError, ImportError) as exc:
        print(f"quasr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quasr: interrupted (nothing was written to --out)", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = plain_format


if __name__ == "__main__":
    sys.exit(main())
