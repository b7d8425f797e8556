"""A quasr model as ONNX Runtime graphs: `quasr export DIR --format onnx --out OUT`.

OUT holds the graphs of onnx_graphs.py (Whisper, Moonshine: encoder.onnx and decoder.onnx with its
KV cache; Wav2Vec2: model.onnx), the processor and generation config to feed and decode them, and
quasr_onnx.json (what each graph takes and gives, and where every quantized layer went). Every
quantized layer is a MatMulNBits node holding quasr's codes (onnx_layers.py says how each bit width,
group size, zero point and input transform maps, and what is widened); float layers stay float.
`quasr.export.OnnxModel(OUT).transcribe(waves)` runs the export in onnxruntime.

The export runs the graphs once in onnxruntime on the example inputs it traced with and compares
them with the same computation in torch; the report gives the largest difference.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .onnx_layers import OnnxExportError, layer_report, to_ort_modules, translation_table

FORMAT = "quasr-onnx"
FORMAT_VERSION = 1
MANIFEST = "quasr_onnx.json"
FAMILIES = ("whisper", "moonshine", "wav2vec2")


@dataclass
class OnnxReport:
    graphs: dict[str, int] = field(default_factory=dict)  # file -> bytes
    layers: list = field(default_factory=list)  # (name, quasr bits, ORT bits or 0, bytes, note)
    check: dict[str, float] = field(default_factory=dict)  # graph -> max |onnxruntime - torch| / max |torch|
    accuracy_level: str = "auto"

    @property
    def bytes(self) -> int:
        return sum(self.graphs.values())

    def lines(self) -> list[str]:
        out = [f"{name}: {size / 1e6:.2f} MB" for name, size in self.graphs.items()]
        counts: dict[tuple[int, int], int] = {}
        for _, qb, ob, _, _ in self.layers:
            counts[(qb, ob)] = counts.get((qb, ob), 0) + 1
        for (qb, ob), c in sorted(counts.items()):
            where = f"MatMulNBits {ob}-bit" if ob else "float MatMul (no exact MatMulNBits form)"
            out.append(f"{c} layer(s) at {qb} bits -> {where}")
        notes = [(n, note) for n, _, _, _, note in self.layers if note]
        for name, note in notes[:6]:
            out.append(f"  {name}: {note}")
        if len(notes) > 6:
            out.append(f"  ... and {len(notes) - 6} more (all in {MANIFEST})")
        out += [f"check {g}: onnxruntime vs torch max relative difference {d:.1e}" for g, d in self.check.items()]
        return out


def _family(model) -> str:
    from ..adapters import get_adapter

    family = get_adapter(model, None).family
    if family not in FAMILIES:
        raise OnnxExportError(f"ONNX export supports {', '.join(FAMILIES)} models, not {family}: run a {family} model "
                              f"with quasr itself, or export its float model with its own tools")
    return family


def _export(module, args: tuple, names: list[str], outputs: list[str], dynamic: dict, path: Path, opset: int):
    chatty = {"onnx_ir": logging.WARNING, "onnxscript": logging.WARNING, "torch.export": logging.WARNING,
              "torch.onnx": logging.ERROR}  # a line per folded constant at INFO; "torchvision is not installed"
    logs = [logging.getLogger(n) for n in chatty]
    levels = [log.level for log in logs]
    try:
        for log, level in zip(logs, chatty.values()):
            log.setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on torchvision ops and deprecated flags
            program = torch.onnx.export(module, args, None, dynamo=True, input_names=names, output_names=outputs,
                                        dynamic_shapes=dynamic, custom_translation_table=translation_table(),
                                        opset_version=opset, optimize=True, verbose=False)
        program.save(str(path), external_data=False)
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _check(path: Path, module, args: tuple, names: list[str]) -> float:
    """max |onnxruntime - torch| / max |torch| over the graph's outputs, on the traced inputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    worst = 0.0
    for g, w in zip(got, want):
        w = w.numpy()
        if g.shape != w.shape or not np.isfinite(g).all():
            raise OnnxExportError(f"{path.name}: onnxruntime gives {g.shape} (finite: {np.isfinite(g).all()}) where "
                                  f"torch gives {w.shape}; the export is broken, please report it")
        scale = max(float(np.abs(w).max()), 1e-12)
        worst = max(worst, float(np.abs(g - w).max()) / scale)
    return worst


def _whisper(model, folder: Path, opset: int) -> tuple[dict, dict]:
    from torch.export import Dim

    from .onnx_graphs import WhisperDecoderGraph, WhisperEncoderGraph

    cfg = model.config
    layers, heads = cfg.decoder_layers, cfg.decoder_attention_heads
    head_dim = cfg.d_model // heads
    frames = 2 * cfg.max_source_positions
    feats = torch.randn(2, cfg.num_mel_bins, frames, generator=torch.Generator().manual_seed(0))
    encoder, decoder = WhisperEncoderGraph(model).eval(), WhisperDecoderGraph(model).eval()
    batch = Dim("batch", min=1, max=1024)
    _export(encoder, (feats,), ["input_features"], ["cross_kv"], {"input_features": {0: batch}}, folder / "encoder.onnx",
            opset)
    with torch.no_grad():
        cross = encoder(feats)
    ids = torch.tensor([[cfg.decoder_start_token_id, 1, 2], [cfg.decoder_start_token_id, 3, 4]])
    past = torch.randn(layers, 2, 2, heads, 3, head_dim, generator=torch.Generator().manual_seed(1))
    steps = Dim("steps", min=1, max=cfg.max_target_positions)
    past_len = Dim("past", min=0, max=cfg.max_target_positions - 1)
    _export(decoder, (ids, past, cross), ["input_ids", "past_kv", "cross_kv"], ["logits", "present_kv"],
            {"input_ids": {0: batch, 1: steps}, "past_kv": {2: batch, 4: past_len}, "cross_kv": {2: batch}},
            folder / "decoder.onnx", opset)
    check = {"encoder.onnx": _check(folder / "encoder.onnx", encoder, (feats,), ["input_features"]),
             "decoder.onnx": _check(folder / "decoder.onnx", decoder, (ids, past, cross), ["input_ids", "past_kv", "cross_kv"])}
    graphs = {
        "encoder": {"file": "encoder.onnx", "inputs": {"input_features": ["batch", cfg.num_mel_bins, frames]},
                    "outputs": {"cross_kv": [layers, 2, "batch", heads, cfg.max_source_positions, head_dim]}},
        "decoder": {"file": "decoder.onnx",
                    "inputs": {"input_ids": ["batch", "steps"], "past_kv": [layers, 2, "batch", heads, "past", head_dim],
                               "cross_kv": [layers, 2, "batch", heads, cfg.max_source_positions, head_dim]},
                    "outputs": {"logits": ["batch", cfg.vocab_size],
                                "present_kv": [layers, 2, "batch", heads, "past + steps", head_dim]}},
    }
    return graphs, check


def _moonshine(model, folder: Path, opset: int) -> tuple[dict, dict]:
    from torch.export import Dim

    from .onnx_graphs import MoonshineDecoderGraph, MoonshineEncoderGraph

    cfg = model.config
    layers = cfg.decoder_num_hidden_layers
    attn = model.model.decoder.layers[0].encoder_attn
    kv_heads, head_dim = cfg.decoder_num_key_value_heads, attn.head_dim
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 16000 * 2, generator=g) * 0.1
    mask = torch.ones(2, 16000 * 2, dtype=torch.int64)
    mask[1, 16000 + 4000:] = 0  # a shorter clip, padded: the mask reaches the cross-attention
    encoder, decoder = MoonshineEncoderGraph(model).eval(), MoonshineDecoderGraph(model).eval()
    batch, samples = Dim("batch", min=1, max=1024), Dim("samples", min=2000, max=16000 * 64)
    enc_names = ["input_values", "attention_mask"]
    _export(encoder, (wave, mask), enc_names, ["cross_kv", "encoder_mask"],
            {"input_values": {0: batch, 1: samples}, "attention_mask": {0: batch, 1: samples}},
            folder / "encoder.onnx", opset)
    with torch.no_grad():
        cross, frames_mask = encoder(wave, mask)
    ids = torch.tensor([[cfg.decoder_start_token_id, 5, 6], [cfg.decoder_start_token_id, 7, 8]])
    past = torch.randn(layers, 2, 2, kv_heads, 3, head_dim, generator=g)
    frames = Dim("frames", min=2, max=16000 * 64 // 384)
    steps = Dim("steps", min=1, max=cfg.max_position_embeddings)
    past_len = Dim("past", min=0, max=cfg.max_position_embeddings - 1)
    dec_names = ["input_ids", "past_kv", "cross_kv", "encoder_mask"]
    _export(decoder, (ids, past, cross, frames_mask), dec_names, ["logits", "present_kv"],
            {"input_ids": {0: batch, 1: steps}, "past_kv": {2: batch, 4: past_len}, "cross_kv": {2: batch, 4: frames},
             "encoder_mask": {0: batch, 1: frames}}, folder / "decoder.onnx", opset)
    check = {"encoder.onnx": _check(folder / "encoder.onnx", encoder, (wave, mask), enc_names),
             "decoder.onnx": _check(folder / "decoder.onnx", decoder, (ids, past, cross, frames_mask), dec_names)}
    kv = [layers, 2, "batch", kv_heads, "frames", head_dim]
    graphs = {
        "encoder": {"file": "encoder.onnx", "inputs": {"input_values": ["batch", "samples"],
                                                       "attention_mask": ["batch", "samples"]},
                    "outputs": {"cross_kv": kv, "encoder_mask": ["batch", "frames"]}},
        "decoder": {"file": "decoder.onnx",
                    "inputs": {"input_ids": ["batch", "steps"], "past_kv": [layers, 2, "batch", kv_heads, "past", head_dim],
                               "cross_kv": kv, "encoder_mask": ["batch", "frames"]},
                    "outputs": {"logits": ["batch", cfg.vocab_size],
                                "present_kv": [layers, 2, "batch", kv_heads, "past + steps", head_dim]}},
    }
    return graphs, check


def _wav2vec2(model, processor, folder: Path, opset: int) -> tuple[dict, dict]:
    from torch.export import Dim

    from .onnx_graphs import CtcGraph

    if getattr(processor.feature_extractor, "return_attention_mask", False):
        raise OnnxExportError("this Wav2Vec2 checkpoint takes an attention mask (its feature extractor returns one); "
                              "the ONNX export covers checkpoints without one (group-norm feature extractors)")
    graph = CtcGraph(model).eval()
    wave = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    samples = Dim("samples", min=400, max=16000 * 600)
    _export(graph, (wave,), ["input_values"], ["logits"], {"input_values": {0: Dim("batch", min=1, max=1024), 1: samples}},
            folder / "model.onnx", opset)
    check = {"model.onnx": _check(folder / "model.onnx", graph, (wave,), ["input_values"])}
    graphs = {"ctc": {"file": "model.onnx", "inputs": {"input_values": ["batch", "samples"]},
                      "outputs": {"logits": ["batch", "frames", model.config.vocab_size]}}}
    return graphs, check


def export_onnx(model, processor, out: str | Path, accuracy_level="auto", opset: int = 18,
                overwrite: bool = False) -> OnnxReport:
    """Write `model` (a quasr model, or a float one: its layers stay float) as ONNX Runtime graphs into
    the folder `out`, all or nothing (quasr.outputs); the model itself is not changed."""
    from ..outputs import OutputFolder

    for package in ("onnxscript", "onnxruntime"):  # torch.onnx writes through onnxscript; the check runs in ORT
        try:
            __import__(package)
        except ImportError:
            raise OnnxExportError(f"ONNX export needs {package}: pip install 'quasr[onnx]'") from None
    family = _family(model)
    work = copy.deepcopy(model).to("cpu").float().eval()
    from ..integrations import attention

    attention.enable(work, "exact")  # ONNX Runtime runs its own float32 attention: trace and check against torch's
    modules = to_ort_modules(work, accuracy_level)
    report = OnnxReport(layers=layer_report(modules), accuracy_level=str(accuracy_level))
    with OutputFolder(out, overwrite) as stage:
        if family == "whisper":
            graphs, report.check = _whisper(work, stage, opset)
        elif family == "moonshine":
            graphs, report.check = _moonshine(work, stage, opset)
        else:
            graphs, report.check = _wav2vec2(work, processor, stage, opset)
        processor.save_pretrained(stage)
        if hasattr(work.config, "quantization_config"):  # quasr's loader plan: the graphs hold the weights now
            del work.config.quantization_config
        work.config.save_pretrained(stage)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(stage)
        report.graphs = {g["file"]: (stage / g["file"]).stat().st_size for g in graphs.values()}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": family, "opset": opset,
                    "accuracy_level": str(accuracy_level), "graphs": graphs, "check": report.check,
                    "layers": [{"name": n, "quasr_bits": qb, "matmulnbits_bits": ob, "bytes": nb, "note": note}
                               for n, qb, ob, nb, note in report.layers]}
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return report
