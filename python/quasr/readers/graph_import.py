"""Recover a PyTorch state dict from an exported inference graph (ONNX, or ONNX Runtime's .ort).

Exporters rename weights (`onnx::MatMul_1947`), transpose them (MatMul takes (in, out)), fold them
(weight norm, deduplicated constants behind Identity), cast them (fp16) or quantize them (int8).
What survives is the name of the node that uses each weight: `/model/decoder/layers.3/mlp/fc1/MatMul`
carries the module path, and the op type and input slot say which parameter it is. So each
initializer is followed through its decoding chain to the node that consumes it:

- ORT-format Moonshine:        int8 -> Cast -> Mul(scale) -> Add(zero point)      W = q*s + z
- ONNX QDQ:                    int8 -> DequantizeLinear(scale, zero point, axis)  W = (q - z)*s
- ONNX dynamic quantization:   int8 -> MatMulInteger / ConvInteger, with NAME_scale beside it
- fp16 exports:                fp16 (-> Cast)                                     W = float(w)
- any of them:                 -> Identity ...                                    (shared constants)
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .ort import OrtFormatError, OrtGraph, OrtNode


class GraphImportError(OrtFormatError):
    pass


def _const(graph: OrtGraph, name: str, what: str) -> np.ndarray:
    if name not in graph.initializers:
        raise GraphImportError(f"{what}: {name!r} is not a constant")
    return graph.initializers[name].astype(np.float32)


def _per_axis(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def decoded_values(graph: OrtGraph, cons: dict[str, list[OrtNode]]) -> list[tuple[str, np.ndarray, str]]:
    """(tensor name as the graph's compute nodes see it, float value, initializer name) for every
    weight-like initializer. An int8 weight read directly by MatMulInteger/ConvInteger is returned
    under its own name, already dequantized."""
    out = []
    for name, arr in graph.initializers.items():
        if arr.size <= 1 or arr.dtype not in (np.int8, np.uint8, np.float16, np.float32, np.float64):
            continue
        users = cons.get(name, [])
        if arr.dtype in (np.int8, np.uint8):
            if not users:
                continue
            u = users[0]
            if u.op_type == "Cast":  # Cast -> Mul(scale) -> [Add(zero point)]
                cur, value = u.outputs[0], arr.astype(np.float32)
                for op in ("Mul", "Add"):
                    nxt = cons.get(cur, [])
                    if len(nxt) != 1 or nxt[0].op_type != op:
                        if op == "Add":
                            break
                        raise GraphImportError(f"{name}: expected Mul after Cast, found {[n.op_type for n in nxt]}")
                    other = [i for i in nxt[0].inputs if i != cur]
                    c = _const(graph, other[0], name)
                    value = value * _per_axis(c, value.ndim, 0) if op == "Mul" else value + _per_axis(c, value.ndim, 0)
                    cur = nxt[0].outputs[0]
                out.append((cur, value, name))
            elif u.op_type == "DequantizeLinear" and u.inputs[0] == name:
                s = _const(graph, u.inputs[1], name)
                z = _const(graph, u.inputs[2], name) if len(u.inputs) > 2 and u.inputs[2] else np.zeros(1, np.float32)
                axis = int(u.attributes.get("axis", 1)) % arr.ndim
                value = (arr.astype(np.float32) - _per_axis(z, arr.ndim, axis)) * _per_axis(s, arr.ndim, axis)
                out.append((u.outputs[0], value, name))
            elif u.op_type in ("MatMulInteger", "ConvInteger") and u.inputs[1] == name:
                base = name[: -len("_quantized")] if name.endswith("_quantized") else name
                if base + "_scale" not in graph.initializers:
                    raise GraphImportError(f"{name}: dynamic-quantized weight without {base}_scale")
                s = _const(graph, base + "_scale", name)
                z = _const(graph, u.inputs[3], name) if len(u.inputs) > 3 and u.inputs[3] else np.zeros(1, np.float32)
                axis = 1 if u.op_type == "MatMulInteger" else 0  # per-channel = per output channel
                value = (arr.astype(np.float32) - _per_axis(z, arr.ndim, axis)) * _per_axis(s, arr.ndim, axis)
                out.append((name, value, name))
            continue
        value = arr.astype(np.float32)
        if len(users) == 1 and users[0].op_type == "Cast":
            out.append((users[0].outputs[0], value, name))
        else:
            out.append((name, value, name))
    return out


def _follow_identity(cons: dict, name: str) -> list[str]:
    names, todo = [], [name]
    while todo:
        n = todo.pop()
        names.append(n)
        todo.extend(u.outputs[0] for u in cons.get(n, []) if u.op_type == "Identity")
    return names


def module_path(node_name: str, renames: dict[str, str]) -> str:
    """`/model/decoder/layers.3/mlp/up_proj/MatMul` -> `model.decoder.layers.3.mlp.fc1` (renamed)."""
    parts = [p for p in node_name.split("/") if p][:-1]  # the last part is the op ("MatMul", "Add_1")
    return ".".join(renames.get(p, p) for p in parts)


def graph_state_dict(graph: OrtGraph, expected: dict[str, torch.Size] | None, renames: dict[str, str] | None = None,
                     path_fn: Callable[[str], str] = lambda p: p) -> dict[str, torch.Tensor]:
    """Parameter name -> float32 tensor for every parameter in `expected` (name -> shape) that the
    graph provides (`expected=None`: every parameter-like tensor found). An initializer that already
    carries a parameter's name (and shape) is taken as is; others are placed by the node that
    consumes them."""
    renames = renames or {}
    cons = graph.consumers()
    sd: dict[str, torch.Tensor] = {}

    def put(key: str, value: np.ndarray) -> None:
        if expected is not None and key not in expected:
            return
        if expected is not None and tuple(value.shape) != tuple(expected[key]):
            if value.size == int(np.prod(expected[key])) and value.squeeze().ndim <= 1:
                value = value.reshape(tuple(expected[key]))  # [C, 1] norm constants
            else:
                raise GraphImportError(f"{key}: graph has shape {value.shape}, the model needs {tuple(expected[key])}")
        t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if key in sd and not torch.allclose(sd[key], t):
            raise GraphImportError(f"two different values for {key}")
        sd[key] = t

    for seen_as, value, init_name in decoded_values(graph, cons):
        for alias in [init_name] + _follow_identity(cons, seen_as):
            # exporters keep parameter names for tensors used as they are (and for the Identity
            # outputs of deduplicated constants)
            if expected is not None and alias in expected and tuple(value.shape) == tuple(expected[alias]):
                put(alias, value)
            for node in cons.get(alias, []):
                if node.op_type == "Identity":
                    continue
                slot = node.inputs.index(alias)
                path = path_fn(module_path(node.name, renames))
                leaf = path.rsplit(".", 1)[-1]
                op = node.op_type
                if op in ("MatMul", "MatMulInteger") and slot == 1 and value.ndim == 2:
                    put(f"{path}.weight", value.T)
                elif op == "Gemm" and slot == 1:
                    put(f"{path}.weight", value if node.attributes.get("transB", 0) else value.T)
                elif op in ("Gemm", "Conv") and slot == 2:
                    put(f"{path}.bias", value)
                elif op in ("Conv", "ConvInteger") and slot == 1:
                    put(f"{path}.weight", value)
                elif op == "Gather" and slot == 0:
                    put(f"{path}.weight", value)
                elif op == "LayerNormalization" and slot in (1, 2):
                    put(f"{path}.{'weight' if slot == 1 else 'bias'}", value)
                elif op == "Mul" and "norm" in leaf:
                    put(f"{path}.weight", value)
                elif op == "Add" and value.ndim <= 2:
                    put(f"{path}.bias", value)
    return sd


def read_onnx_graph(path) -> OrtGraph:
    """An ONNX model (protobuf, via the `onnx` package) as an OrtGraph; subgraphs flattened in."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("reading .onnx files needs the onnx package: pip install 'quasr[onnx]'") from None
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others
        raise GraphImportError(f"{path} is not a readable ONNX model: {exc}") from None
    graph = OrtGraph({}, [], [i.name for i in model.graph.input], [o.name for o in model.graph.output])

    def walk(g):
        for t in g.initializer:
            graph.initializers[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
                graph.initializers[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
                continue
            attrs = {}
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type != onnx.AttributeProto.GRAPHS:
                    attrs[a.name] = onnx.helper.get_attribute_value(a)
            graph.nodes.append(OrtNode(n.name, n.op_type, list(n.input), list(n.output), attrs))

    walk(model.graph)
    return graph
