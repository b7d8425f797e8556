"""Ahead-of-time compile of the shipped Triton kernels, no GPU needed: every module of
triton_kernels.aot.SHIPPED_MODULES must exist and list its configurations (aot_variants()), every
variant must compile for sm_90 with zero register spills, and a deterministic sample of them for
sm_80 too (aot.sample: the 12 most register-hungry on sm_90 plus 12 evenly spaced). Compiling every
variant for sm_80 as well takes about twice as long on a 2-core CI machine, past this file's budget
(~3 min); `python bench/triton_compile.py --caps 80 90` does all of it and writes the table.

Runs bench/triton_compile.py in a subprocess without TRITON_INTERPRET (other test files set it at
import, and interpreted kernels cannot be compiled). Triton's own cache is used, so reruns are fast.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Not imported here: importing triton in this process would fix its mode (compiled/interpreted) for
# the test files that follow, which set TRITON_INTERPRET before importing it.
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_SM80 = 24


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "triton_compile.py"), "--caps", "90", "--sample",
                           f"80:{SAMPLE_SM80}", "--warm-cache", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if not out.exists():
        pytest.fail(f"bench/triton_compile.py wrote no result (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                    f"{proc.stderr[-4000:]}")
    return proc, json.loads(out.read_text())


def _aot():
    """triton_kernels/aot.py by itself (it imports triton only inside its compile functions)."""
    spec = importlib.util.spec_from_file_location("_quasr_aot_standalone", ROOT / "triton_kernels" / "aot.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module by name
    spec.loader.exec_module(mod)
    return mod


def test_every_shipped_module_lists_variants(compiled):
    _, res = compiled
    shipped = _aot().SHIPPED_MODULES
    assert set(shipped) >= {"qlinear", "hadamard"}
    assert not res["missing"], f"shipped kernel modules missing: {res['missing']}"
    for mod in shipped:
        assert res["variants"].get(mod), f"{mod}.aot_variants() is empty"


def test_every_variant_compiles_for_sm90_and_a_sample_for_sm80_without_spills(compiled):
    proc, res = compiled
    rows = res["rows"]
    all_names = {v for vs in res["variants"].values() for v in vs}
    assert {r["name"] for r in rows if r["cap"] == 90} == all_names
    sm80 = [r for r in rows if r["cap"] == 80]
    assert len(sm80) == min(SAMPLE_SM80, len(all_names))
    spilled = [f"{r['name']} sm_{r['cap']}: {r['spill_stores']} B stores / {r['spill_loads']} B loads"
               for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, "register spills:\n" + "\n".join(spilled)
    assert all(0 < r["regs"] <= 255 for r in rows)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_sample_is_deterministic_and_favours_register_hungry_variants():
    aot = _aot()
    names = [f"v{i:02d}" for i in range(40)]
    regs = {n: (200 if n in ("v07", "v31") else 40) for n in names}
    s = aot.sample(names, 8, regs)
    assert s == aot.sample(names, 8, regs) and len(s) == 8 and {"v07", "v31"} <= set(s)
    assert aot.sample(names, 100) == names
