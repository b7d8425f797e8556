"""Read Hugging Face / optimum ONNX exports of Wav2Vec2 CTC models (fp32, fp16, dynamic int8) back
into `Wav2Vec2ForCTC`, so a model that ships as ONNX can be quantized with quasr.

An export directory holds the ONNX graph (`model.onnx`, or another single `*.onnx`) beside the
`config.json` and processor files the exporter copies. Weights are recovered by graph_import; the
weight-normed positional convolution, which exporters fold into one tensor, is split back into
direction and magnitude (g = ||W|| over all dims but the kernel axis, v = W, so g * v/||v|| = W).
"""

from __future__ import annotations

from pathlib import Path

from .graph_import import GraphImportError, graph_state_dict, read_onnx_graph

# parameters an inference graph never contains (used only in pre-training)
_TRAINING_ONLY = ("wav2vec2.masked_spec_embed",)


def _onnx_file(directory: Path) -> Path:
    cands = sorted(directory.glob("*.onnx"))
    if (directory / "model.onnx").exists():
        return directory / "model.onnx"
    if len(cands) != 1:
        raise FileNotFoundError(f"{directory}: expected model.onnx (found {[c.name for c in cands]})")
    return cands[0]


def wav2vec2_from_onnx(onnx_path: str | Path, config):
    """Wav2Vec2ForCTC(config) with weights from an ONNX export."""
    from transformers import Wav2Vec2ForCTC

    model = Wav2Vec2ForCTC(config).eval()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    folded = {}  # parametrized (weight-normed) modules: the graph holds their computed weight
    for name, module in model.named_modules():
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            folded[f"{name}.weight"] = name
            expected[f"{name}.weight"] = module.weight.shape
    sd = graph_state_dict(read_onnx_graph(onnx_path), expected)
    for key, name in folded.items():
        if key in sd:
            w = sd.pop(key)
            param = model.get_submodule(name).parametrizations.weight
            dim = next(i for i, s in enumerate(param.original0.shape) if s != 1)  # weight_norm's dim
            others = [d for d in range(w.dim()) if d != dim]
            sd[f"{name}.parametrizations.weight.original0"] = w.norm(dim=others, keepdim=True)
            sd[f"{name}.parametrizations.weight.original1"] = w
    needed = {k for k in model.state_dict() if not k.startswith(_TRAINING_ONLY)}
    missing = sorted(needed - set(sd))
    if missing:
        raise GraphImportError(f"{onnx_path}: could not find {len(missing)} weights in the graph, e.g. {missing[:5]}")
    model.load_state_dict(sd, strict=False)
    return model


def load_wav2vec2_onnx(directory: str | Path):
    """(Wav2Vec2ForCTC, processor) from an export directory (model.onnx + config + processor files)."""
    from transformers import AutoConfig, AutoProcessor

    directory = Path(directory)
    config = AutoConfig.from_pretrained(directory)
    if config.model_type != "wav2vec2":
        raise ValueError(f"{directory}: ONNX import supports wav2vec2 exports, this is {config.model_type!r}")
    model = wav2vec2_from_onnx(_onnx_file(directory), config)
    return model, AutoProcessor.from_pretrained(directory)


__all__ = ["load_wav2vec2_onnx", "wav2vec2_from_onnx", "GraphImportError"]
