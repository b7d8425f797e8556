#!/usr/bin/env bash
# Portability check of the CPU kernels on a non-x86 target (aarch64), from an x86-64 Debian machine:
#   1. cross-compile the torch-free kernels (csrc/cpu/qgemm*.cpp, rotate.cpp, attention.cpp) for aarch64, warnings
#      as errors: only the portable scalar path is compiled there (the AVX2 code is behind x86 guards);
#   2. syntax-check the torch binding (csrc/cpu/ops.cpp) for aarch64 against this venv's torch headers
#      (x86 headers, so a syntax/portability check only; skipped with a note if torch is missing);
#   3. build csrc/cpu/tests/scalar_check.cpp (packs random weights in the FORMAT.md layout, compares
#      the kernels with naive dequantize-matmul and a dense Kronecker rotation) natively and run it
#      (x86: scalar path + AVX2 paths), then for aarch64 and run it under qemu-aarch64 (scalar path).
# Installs g++-aarch64-linux-gnu and qemu-user with apt when missing (root, Debian).
#
#   bash .ci/arm_check.sh            (or: make arm-check)
#
# Env: PYTHON (the interpreter whose torch provides headers; default .venv/bin/python, else python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS
step() { echo "arm_check: [$((SECONDS - START))s] $*"; }
fail() { echo "arm_check: FAIL: $*" >&2; exit 1; }

CXX_A64=aarch64-linux-gnu-g++
SYSROOT=/usr/aarch64-linux-gnu
if ! command -v "$CXX_A64" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    step "installing g++-aarch64-linux-gnu qemu-user (apt)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q g++-aarch64-linux-gnu qemu-user >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q g++-aarch64-linux-gnu qemu-user >/dev/null; } \
        || fail "could not install the aarch64 cross compiler / qemu-user"
fi
command -v g++ >/dev/null || fail "no native g++"
step "$("$CXX_A64" --version | head -n1); $(qemu-aarch64 --version | head -n1)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/quasr-arm-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
FLAGS=(-O2 -std=c++17 -Wall -Wextra -Werror -Icsrc/cpu)
KERNELS=(csrc/cpu/qgemm.cpp csrc/cpu/qgemm_i8.cpp csrc/cpu/rotate.cpp csrc/cpu/attention.cpp)

for src in "${KERNELS[@]}"; do
    step "aarch64 compile $src"
    "$CXX_A64" "${FLAGS[@]}" -c "$src" -o "$TMP/$(basename "$src" .cpp).o" || fail "$src does not compile for aarch64"
done

PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python" || PY=python3; }
if INC="$("$PY" -c 'import sysconfig; from torch.utils.cpp_extension import include_paths; print(" ".join(["-I" + p for p in include_paths()] + ["-I" + sysconfig.get_paths()["include"]]))' 2>/dev/null)"; then
    step "aarch64 -fsyntax-only csrc/cpu/ops.cpp (torch headers of $PY)"
    # shellcheck disable=SC2086
    "$CXX_A64" -O2 -std=c++17 -fsyntax-only -Wno-c++20-extensions $INC -Icsrc/cpu csrc/cpu/ops.cpp \
        || fail "csrc/cpu/ops.cpp does not compile for aarch64"
else
    step "SKIP ops.cpp syntax check: no torch in $PY"
fi

DRIVER=(csrc/cpu/qgemm.cpp csrc/cpu/qgemm_i8.cpp csrc/cpu/rotate.cpp csrc/cpu/attention.cpp csrc/cpu/tests/scalar_check.cpp)
step "native build + run csrc/cpu/tests/scalar_check.cpp ($(uname -m))"
g++ "${FLAGS[@]}" "${DRIVER[@]}" -o "$TMP/scalar_check_native" || fail "native build of scalar_check"
"$TMP/scalar_check_native" || fail "scalar_check failed natively"

step "aarch64 build + qemu run csrc/cpu/tests/scalar_check.cpp"
"$CXX_A64" "${FLAGS[@]}" "${DRIVER[@]}" -o "$TMP/scalar_check_aarch64" || fail "aarch64 build of scalar_check"
qemu-aarch64 -L "$SYSROOT" "$TMP/scalar_check_aarch64" || fail "scalar_check failed on aarch64 (qemu)"

step "OK: qgemm.cpp, qgemm_i8.cpp, rotate.cpp, attention.cpp build for aarch64 (scalar path), ops.cpp parses for aarch64, scalar_check passes natively and under qemu-aarch64"
