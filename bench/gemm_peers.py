"""Per-matmul CPU microbenchmark: quasr's kernels against ONNX Runtime's MatMulNBits
(com.microsoft contrib op), torch's int4 CPU kernel and fp32 torch.matmul, plus measured copy
bandwidth and the weight bandwidth each kernel achieves at M = 1.

    .venv/bin/python bench/gemm_peers.py [--quick] [--threads 2] [--out bench/gemm_peers.md]
        [--shapes 4096x4096,1536x384] [--ms 1,8,64] [--bits 2,4,8] [--all-isas] [--stat median|min]

(--quick: 3 small shapes, M 1/8/64, ~15-30 s; the full default run is a few minutes on 2 cores.)

Shapes are N x K (out x in features). Defaults: 4096x4096 and the Linear shapes of whisper-tiny.en
(d 384, ffn 1536), whisper-base (d 512, ffn 2048) and moonshine-base (d 416, ffn 1664; its decoder's
gated fc1 is 416 -> 2*1664 = 3328). K = 416 is not a multiple of the 128 group: quasr and ORT pad it
to 4 groups internally; torch's int4 kernel refuses it, so it gets K padded to 512 (marked †).

Kernels, all on the same thread count (torch.set_num_threads / ORT intra_op_num_threads, inter 1):
- fp32: x @ W.T (torch.matmul).
- torch int4: aten._weight_int4pack_mm_for_cpu, bf16 activations, group 128 (bench/gemm.py int4pack).
- ORT: a one-node MatMulNBits model built in memory (bits 2/4/8, block 128, uint8 zero points,
  i.e. asymmetric like quasr's weights; A is [M, K] with M symbolic, so one session serves every M).
  B is uint8 [N, ceil(K/128), 128*bits/8]: per output row and K block, the block's codes as one
  LSB-first bit stream (4 bits: even k in the low nibble, odd k in the high); scales float [N*kb];
  zero_points uint8 [N, ceil(kb*bits/8)], packed along kb the same way; W = (q - zp) * scale. Timed at accuracy_level 0 (fp32 activations) and 4 (int8
  activations), best reported; called through IOBinding with a preallocated output, so the per-call
  Python overhead shown in the header is included. The layout is checked against a numpy
  dequantize-matmul at start-up for every width 2..8 (ORT documents 2/4/8; others are reported).
- quasr int8 path: quasr_cpu.qlinear_i8 on the repack_i8 layout (8-bit symmetric activations per
  token and weight group inside the kernel), best ISA of this CPU unless --all-isas adds a table.
- quasr float path: quasr.ops.qlinear on the packed weight (auto kernel choice), 4 bits.

Times are the median of repeated calls (bench/gemm.py timeit; --stat min for a loaded machine: with
another process on a core, each OpenMP call of torch or quasr can lose a whole scheduler slice, while
ORT's pool lets the caller finish the work; the header reports the load average). Ratio targets:
ORT / quasr at the same bits >= 1.2; torch-int4 / quasr 4-bit (int8 path) >= 1.5; for 3/5/6/7 bits,
quasr <= 1.2x the next ORT-supported width's ORT time scaled by bits / next_bits.
Weight bandwidth at M = 1 = weight bytes read / time; small shapes fit in L2/L3 and so can exceed
the memory copy bandwidth (the "fits" column says where the quasr 4-bit weight would sit).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm import int4pack, packed_weight, timeit  # noqa: E402

from quasr import ops  # noqa: E402  (importing quasr loads torch.ops.quasr_cpu)

GROUP = 128
ORT_BITS = (2, 4, 8)
ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512bw", 3: "avx512-vnni"}
MODEL_SHAPES = {  # (N out, K in) of each model's Linear layers
    "big": [(4096, 4096)],
    "whisper-tiny.en": [(384, 384), (1536, 384), (384, 1536)],
    "whisper-base": [(512, 512), (2048, 512), (512, 2048)],
    "moonshine-base": [(416, 416), (1664, 416), (416, 1664), (3328, 416)],
}
DEFAULT_SHAPES = list(dict.fromkeys(s for v in MODEL_SHAPES.values() for s in v))
QUICK_SHAPES = [(1536, 384), (384, 1536), (416, 416)]
DEFAULT_MS = [1, 2, 4, 8, 16, 64, 1500]
QUICK_MS = [1, 8, 64]


def timeit_min(fn, budget=0.2, max_reps=50) -> float:
    """bench/gemm.py's timeit with min in place of the median (--stat min)."""
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(3, min(max_reps, int(budget / max(time.perf_counter() - t0, 1e-6))))
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ----------------------------------------------------------------------------- ORT MatMulNBits
def pack_bits(vals: np.ndarray, bits: int) -> np.ndarray:
    """Rows of codes -> bytes, LSB first: element i takes bits [i*bits, (i+1)*bits) of the row's
    bit stream (ORT's layout; for 4 bits element 2j is the low nibble of byte j, 2j+1 the high)."""
    r, n = vals.shape
    stream = ((vals[..., None].astype(np.uint16) >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    stream = stream.reshape(r, n * bits)
    pad = (-stream.shape[1]) % 8
    if pad:
        stream = np.pad(stream, ((0, 0), (0, pad)))
    return np.packbits(stream, axis=1, bitorder="little")


def ort_weight(n: int, k: int, bits: int, seed: int = 0):
    """Random codes [N, K], scales [N, kb], zero points [N, kb] and their MatMulNBits tensors:
    B uint8 [N, kb, 128*bits/8] (K zero-padded to kb*128), scales float [N*kb], zero_points uint8
    [N * ceil(kb*bits/8)] packed along kb like B."""
    rng = np.random.default_rng(seed)
    kb = -(-k // GROUP)
    codes = rng.integers(0, 1 << bits, (n, k), dtype=np.int64)
    scales = (rng.random((n, kb), dtype=np.float32) * 0.01).astype(np.float32)
    zeros = rng.integers(0, 1 << bits, (n, kb), dtype=np.int64)
    padded = np.zeros((n, kb * GROUP), dtype=np.int64)
    padded[:, :k] = codes
    b = pack_bits(padded.reshape(n * kb, GROUP), bits).reshape(n, kb, GROUP * bits // 8)
    zp = pack_bits(zeros, bits)
    return dict(codes=codes, scales=scales, zeros=zeros, B=b, S=scales.reshape(-1), ZP=zp.reshape(-1))


def ort_session(w: dict, n: int, k: int, bits: int, accuracy: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zero_points"], ["Y"], domain="com.microsoft",
                            K=k, N=n, bits=bits, block_size=GROUP, accuracy_level=accuracy)
    graph = helper.make_graph(
        [node], "mnb", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [numpy_helper.from_array(w["B"], "B"), numpy_helper.from_array(w["S"], "scales"),
         numpy_helper.from_array(w["ZP"], "zero_points")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4  # a refused width would log an error: callers report it instead
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_caller(sess, x: np.ndarray, n: int):
    """A no-argument callable running sess on x through IOBinding into a preallocated output."""
    import onnxruntime as ort

    y = ort.OrtValue.ortvalue_from_numpy(np.empty((x.shape[0], n), dtype=np.float32))
    io = sess.io_binding()
    io.bind_cpu_input("A", x)
    io.bind_ortvalue_output("Y", y)
    return lambda: sess.run_with_iobinding(io), y


def ort_overhead(threads: int) -> float:
    """Median µs of one IOBinding call of an Identity graph on [1, 384]: ORT's fixed per-call cost."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["A"], ["Y"])], "id",
                          [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 384])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 384])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fn, _ = ort_caller(sess, np.ones((1, 384), np.float32), 384)
    return timeit(fn, budget=0.05) * 1e6


def verify_ort(threads: int) -> dict[int, str]:
    """Check the B / scales / zero_points layout against a numpy dequantize-matmul, for bits 2..8,
    on N=48, K=320 (K not a multiple of the block, to check padding), M=3. Returns bits -> verdict."""
    n, k, m = 48, 320, 3
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    out = {}
    for bits in range(2, 9):
        w = ort_weight(n, k, bits, seed=bits)
        deq = (w["codes"] - np.repeat(w["zeros"], GROUP, axis=1)[:, :k]) * np.repeat(w["scales"], GROUP, axis=1)[:, :k]
        ref = x @ deq.T.astype(np.float32)
        verdicts = []
        for acc in (0, 4):
            try:
                y = ort_session(w, n, k, bits, acc, threads).run(None, {"A": x})[0]
            except Exception as exc:  # noqa: BLE001 - report whatever ORT says
                msg = str(exc).strip().splitlines()[0]
                verdicts.append("refused: " + (msg.split("was false.")[-1].strip() or msg)[-120:])
                continue
            err = float(np.abs(y - ref).max() / np.abs(ref).max())
            ok = err < (1e-4 if acc == 0 else 3e-2)
            verdicts.append(f"acc{acc} {'ok' if ok else 'MISMATCH'} (rel err {err:.1e})")
        if len(set(verdicts)) == 1 and verdicts[0].startswith("refused"):
            verdicts = verdicts[:1]
        out[bits] = ", ".join(verdicts)
    return out


# ----------------------------------------------------------------------------- machine facts
def cpu_facts() -> dict:
    model, flags = platform_model(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    caches = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            level, kind = (idx / "level").read_text().strip(), (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind != "Instruction":
            caches[f"L{level}"] = int(size.rstrip("K")) * 1024 if size.endswith("K") else int(size.rstrip("M")) << 20
    return dict(model=model, flags={f: f in flags for f in ("avx2", "avx512f", "avx512bw", "avx512_vnni")},
                caches=caches)


def platform_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def copy_bandwidth(mb: int = 256) -> float:
    """GB/s of dst.copy_(src) on a `mb` MB float32 tensor, read + write counted (2x bytes)."""
    src = torch.ones(mb * (1 << 20) // 4)
    dst = torch.empty_like(src)
    t = timeit(lambda: dst.copy_(src), budget=0.3, max_reps=20)
    return 2 * src.numel() * 4 / t / 1e9


def fits(nbytes: int, caches: dict) -> str:
    for lvl in ("L2", "L3"):
        if lvl in caches and nbytes <= caches[lvl]:
            return lvl
    return "DRAM"


# ----------------------------------------------------------------------------- the benchmark
def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def next_ort(b: int) -> int:
    return min(o for o in ORT_BITS if o >= b)


def bench_shape(n: int, k: int, ms: list[int], bits: list[int], threads: int, budget: float,
                all_isas: bool, best_isa: int) -> tuple[list[dict], dict]:
    """Rows (one per M) of times in µs for one N x K shape, and M = 1 weight bytes per kernel."""
    ort_bits = sorted({next_ort(b) for b in bits})
    wbytes = {"fp32": n * k * 4}
    w32 = torch.randn(n, k)
    kp = -(-k // GROUP) * GROUP  # torch int4 needs K % 128 == 0: pad (quasr and ORT pad internally too)
    p4, sz = int4pack(n, kp, GROUP)
    wbytes["int4"] = nbytes(p4, sz)
    q = {}
    for b in bits:
        pw = packed_weight(n, k, b, GROUP)
        codes, params = torch.ops.quasr_cpu.repack_i8(pw.packed, pw.scales, pw.zeros, b, pw.group_size)
        q[b] = (pw, codes, params)
        wbytes[f"q{b}"] = nbytes(codes, params)
    if 4 in q:
        pw4 = q[4][0]
        wbytes["qf4"] = nbytes(pw4.packed, pw4.scales, pw4.zeros)
    def t(fn) -> float:
        return timeit(fn, budget=budget) * 1e6

    # ORT first, one session at a time, each closed before the next: a live session's pool keeps
    # spinning threads that take the second core from OpenMP kernels (torch, quasr), whose calls then
    # wait a scheduler slice (4-20 ms) for it. So no ORT session is alive while torch or quasr run.
    xs = {m: torch.randn(m, k) for m in ms}
    ort_times = {m: {} for m in ms}
    for b in ort_bits:
        w = ort_weight(n, k, b)
        wbytes[f"ort{b}"] = w["B"].nbytes + w["S"].nbytes + w["ZP"].nbytes
        for acc in (0, 4):
            try:
                sess = ort_session(w, n, k, b, acc, threads)
            except Exception as exc:  # noqa: BLE001
                print(f"  ORT bits={b} acc={acc} N={n} K={k}: {str(exc).splitlines()[0][:160]}", file=sys.stderr)
                continue
            for m in ms:
                fn, _ = ort_caller(sess, xs[m].numpy(), n)
                ort_times[m][b, acc] = t(fn)
            del sess, fn
            gc.collect()
            time.sleep(0.2)  # let the closed pool's threads exit

    rows = []
    for m in ms:
        x = xs[m]
        xb = torch.nn.functional.pad(x, (0, kp - k)).to(torch.bfloat16)
        r = {"N": n, "K": k, "M": m, "fp32": t(lambda: x @ w32.T),
             "int4": t(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, p4, GROUP, sz))}
        for b in ort_bits:
            best = None
            for acc in (0, 4):
                if (b, acc) not in ort_times[m]:
                    continue
                us = ort_times[m][b, acc]
                r[f"ort{b}_acc{acc}"] = us
                if best is None or us < best[0]:
                    best = (us, acc)
            if best:
                r[f"ort{b}"], r[f"ort{b}_acc"] = best
        for b, (pw, codes, params) in q.items():
            r[f"q{b}"] = t(lambda: torch.ops.quasr_cpu.qlinear_i8(
                x, codes, params, None, b, pw.group_size, k, n, None, 8, 2, True, 0.0, 0.0, -1))
            if all_isas and m == 1:
                for isa in range(best_isa + 1):
                    r[f"q{b}_isa{isa}"] = t(lambda: torch.ops.quasr_cpu.qlinear_i8(
                        x, codes, params, None, b, pw.group_size, k, n, None, 8, 2, True, 0.0, 0.0, isa))
        if 4 in q:
            r["qf4"] = t(lambda: ops.qlinear(x, q[4][0]))
        rows.append(r)
        print(f"  N={n} K={k} M={m}: fp32 {r['fp32']:.1f} us, quasr4 {r.get('q4', float('nan')):.1f} us, "
              f"ORT4 {r.get('ort4', float('nan')):.1f} us", file=sys.stderr, flush=True)
    return rows, wbytes


# ----------------------------------------------------------------------------- tables
def cell(v, fmt="{:.1f}") -> str:
    return "—" if v is None else fmt.format(v)


def shape_str(r) -> str:
    return f"{r['N']}×{r['K']}" + ("†" if r["K"] % GROUP else "")


def time_table(rows, bits) -> list[str]:
    ort_bits = sorted({next_ort(b) for b in bits})
    head = (["N×K", "M", "fp32 µs", "torch int4 µs"] + [f"ORT {b}b µs (acc)" for b in ort_bits]
            + [f"quasr i8 {b}b µs" for b in bits] + (["quasr float 4b µs"] if 4 in bits else []))
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = [shape_str(r), str(r["M"]), cell(r["fp32"]), cell(r["int4"])]
        c += [f"{r[f'ort{b}']:.1f} ({r[f'ort{b}_acc']})" if f"ort{b}" in r else "fail" for b in ort_bits]
        c += [cell(r.get(f"q{b}")) for b in bits] + ([cell(r.get("qf4"))] if 4 in bits else [])
        out.append("| " + " | ".join(c) + " |")
    return out


def ratio_cell(v, target, higher_is_better=True) -> str:
    if v is None:
        return "—"
    ok = v >= target if higher_is_better else v <= target
    return f"{v:.2f} {'✓' if ok else '✗'}"


def ratio_table(rows, bits) -> list[str]:
    same = [b for b in bits if b in ORT_BITS]
    odd = [b for b in bits if b not in ORT_BITS]
    head = (["N×K", "M"] + [f"ORT{b}/q{b} (≥1.2)" for b in same] + (["int4/q4 (≥1.5)"] if 4 in bits else [])
            + [f"q{b}/(ORT{next_ort(b)}·{b}/{next_ort(b)}) (≤1.2)" for b in odd])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def div(a, b, scale=1.0):
            return r[a] / (r[b] * scale) if a in r and b in r else None
        c = [shape_str(r), str(r["M"])]
        c += [ratio_cell(div(f"ort{b}", f"q{b}"), 1.2) for b in same]
        c += [ratio_cell(div("int4", "q4"), 1.5)] if 4 in bits else []
        c += [ratio_cell(div(f"q{b}", f"ort{next_ort(b)}", b / next_ort(b)), 1.2, False) for b in odd]
        out.append("| " + " | ".join(c) + " |")
    return out


def bw_table(rows, wb_by_shape, bits, caches) -> list[str]:
    ort_bits = sorted({next_ort(b) for b in bits})
    keys = (["fp32", "int4"] + [f"ort{b}" for b in ort_bits] + [f"q{b}" for b in bits]
            + (["qf4"] if 4 in bits else []))
    names = {"fp32": "fp32", "int4": "torch int4", "qf4": "quasr float 4b",
             **{f"ort{b}": f"ORT {b}b" for b in ort_bits}, **{f"q{b}": f"quasr i8 {b}b" for b in bits}}
    fits_col = f"fits (quasr {4 if 4 in bits else bits[0]}b weight)"
    head = ["N×K", fits_col] + [f"{names[k]} GB/s" for k in keys]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["M"] != 1:
            continue
        wb = wb_by_shape[r["N"], r["K"]]
        ref = wb.get("q4", wb.get(f"q{bits[0]}"))
        c = [shape_str(r), fits(ref, caches)]
        c += [f"{wb[k] / r[k] / 1e3:.1f}" if k in r and k in wb else "—" for k in keys]
        out.append("| " + " | ".join(c) + " |")
    return out


def isa_table(rows, bits, best_isa) -> list[str]:
    head = ["N×K", "bits"] + [f"{ISA_NAMES.get(i, i)} µs" for i in range(best_isa + 1)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["M"] != 1:
            continue
        for b in bits:
            out.append("| " + " | ".join([shape_str(r), str(b)] + [cell(r.get(f"q{b}_isa{i}"))
                                                                    for i in range(best_isa + 1)]) + " |")
    return out


# ----------------------------------------------------------------------------- main
def parse_list(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse_shapes(s: str) -> list[tuple[int, int]]:
    return list(dict.fromkeys(tuple(int(v) for v in part.lower().split("x")) for part in s.split(",") if part))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"shapes {QUICK_SHAPES}, M {QUICK_MS}, short timing budget")
    ap.add_argument("--shapes", help="comma-separated NxK (out x in), e.g. 4096x4096,1536x384")
    ap.add_argument("--ms", help=f"comma-separated M values (default {DEFAULT_MS})")
    ap.add_argument("--bits", default="2,3,4,5,6,7,8", help="quasr widths (ORT runs the ORT-supported ones needed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--all-isas", action="store_true", help="also time the int8 path at M=1 on every ISA")
    ap.add_argument("--stat", choices=("median", "min"), default="median",
                    help="statistic over the repeated calls (min resists other load on a shared machine)")
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args()

    shapes = parse_shapes(args.shapes) if args.shapes else (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    ms = parse_list(args.ms) if args.ms else (QUICK_MS if args.quick else DEFAULT_MS)
    bits = sorted(set(parse_list(args.bits)))
    budget = 0.1 if args.quick else 0.2
    if args.stat == "min":
        global timeit
        timeit = timeit_min
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    load0 = os.getloadavg()
    facts = cpu_facts()
    best_isa = int(torch.ops.quasr_cpu.best_isa())
    print("checking ORT's MatMulNBits layout ...", file=sys.stderr, flush=True)
    verdicts = verify_ort(args.threads)
    bw = copy_bandwidth()
    overhead = ort_overhead(args.threads)

    lines = [
        "# quasr vs ORT MatMulNBits vs torch int4, per matmul (CPU)", "",
        f"- CPU: {facts['model']}; flags: " + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in facts["flags"].items()),
        "- caches (per cpu0): " + ", ".join(f"{k} {v >> 10} KiB" for k, v in sorted(facts["caches"].items())),
        f"- quasr_cpu.best_isa() = {best_isa} ({ISA_NAMES.get(best_isa, '?')}); {ops.native_status()}",
        f"- threads {args.threads} (torch.set_num_threads, ORT intra_op {args.threads} / inter 1); "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; {os.cpu_count()} logical CPUs",
        f"- {datetime.datetime.now().isoformat(timespec='seconds')}; command: "
        f"`{' '.join([Path(sys.executable).name] + sys.argv)}`",
        f"- copy bandwidth (256 MB float32 dst.copy_(src), read + write): {bw:.1f} GB/s",
        f"- ORT per-call overhead (IOBinding, Identity on [1, 384]): {overhead:.1f} µs, included in every ORT time",
        "- ORT MatMulNBits layout check vs numpy dequantize-matmul (N=48, K=320, M=3, zero points): "
        + "; ".join(f"**{b}b** {v}" for b, v in verdicts.items()),
        "- ORT B layout: uint8 [N, ceil(K/128), 128*bits/8], each block's codes packed along K LSB first "
        "(4b: even k low nibble, odd k high); scales float [N*kb]; zero points uint8 [N, ceil(kb*bits/8)] packed "
        "the same way along kb; dequant (q - zp) * scale.",
        "", "Times: " + args.stat + " µs per call. ORT: best of accuracy_level 0 / 4 (the level in brackets). quasr i8: "
        "qlinear_i8 (int8 activations), best ISA. † K padded to 512 for torch int4 (it needs K % 128 == 0).", "",
    ]
    print("\n".join(lines), flush=True)

    rows, wbytes = [], {}
    for n, k in shapes:
        print(f"shape N={n} K={k}", file=sys.stderr, flush=True)
        r, wb = bench_shape(n, k, ms, bits, args.threads, budget, args.all_isas, best_isa)
        rows += r
        wbytes[n, k] = wb

    load1 = os.getloadavg()
    body = [f"Load average (1 min) at start {load0[0]:.2f}, at end {load1[0]:.2f} on {os.cpu_count()} CPUs"
            + (": other work shared the CPUs, so times are noisy. OpenMP kernels (torch, quasr) then lose a"
               " scheduler slice (~4-20 ms) on a call whose second thread is descheduled, ORT's pool does not;"
               " retry when idle, or with fewer --threads than idle cores"
               if load0[0] > 0.5 or load1[0] > args.threads + 0.5 else "") + ".", ""]
    body += ["## Times (µs)", ""] + time_table(rows, bits)
    body += ["", "## Ratios (✓ = target met)", ""] + ratio_table(rows, bits)
    body += ["", f"## Weight bandwidth at M = 1 (weight bytes / time; copy bandwidth {bw:.1f} GB/s)", "",
             "Bytes: fp32 N·K·4; torch int4 packed + bf16 scales/zeros; ORT B + scales + zero points; "
             "quasr i8 codes + params; quasr float packed + scales + zeros. Shapes that fit in L2/L3 stay "
             "in cache across repeated calls, so their figures are cache, not memory, bandwidth.", ""]
    body += bw_table(rows, wbytes, bits, facts["caches"])
    if args.all_isas:
        body += ["", "## quasr int8 path at M = 1 by ISA (µs)", ""] + isa_table(rows, bits, best_isa)
    print("\n".join(body), flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines + body) + "\n")


if __name__ == "__main__":
    main()
