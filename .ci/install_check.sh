#!/usr/bin/env bash
# Install check: in a FRESH venv, `pip install 'quasr[models]'` (after the pinned CPU torch) must be
# enough to transcribe real speech with every built-in model, with nothing else installed by hand
# (no useful-moonshine-onnx) and an empty model cache. Exits non-zero with a message on failure.
#
#   bash .ci/install_check.sh
#
# Env: PYTHON (default python3), QUASR_SPEECH (default ../shared/speech beside the repo),
# INSTALL_CHECK_MODELS (default: all three built-ins), INSTALL_CHECK_CLIPS (2), INSTALL_CHECK_MAX_WER (30, %).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
SPEECH="${QUASR_SPEECH:-$ROOT/../shared/speech}"
MODELS="${INSTALL_CHECK_MODELS:-whisper-tiny.en moonshine-base whisper-base}"
CLIPS="${INSTALL_CHECK_CLIPS:-2}"
MAX_WER="${INSTALL_CHECK_MAX_WER:-30}"

START=$SECONDS
step() { echo "install_check: [$((SECONDS - START))s] $*"; }
fail() { echo "install_check: FAIL: $*" >&2; exit 1; }
# pip, quiet, its log kept; on failure the log's tail (less the local index's "Location ... ignored" noise)
pip_step() {
    "$VPY" -m pip --disable-pip-version-check install -q "$@" >"$TMP/pip.log" 2>&1 && return 0
    grep -v "^WARNING: Location .* is ignored" "$TMP/pip.log" | tail -n 40 >&2
    return 1
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/quasr-install-check.XXXXXX")"
cleanup() { rc=$?; step "removing $TMP"; rm -rf "$TMP"; step "done (exit $rc)"; }
trap cleanup EXIT

[ -f "$SPEECH/prompts/manifest.jsonl" ] || fail "no speech at $SPEECH/prompts (set QUASR_SPEECH)"

# Install from a copy of the work tree's non-ignored files: the build writes nothing into the
# checkout, and nothing ignored there (a built _C*.so, egg-info, a venv) can stand in for a real build.
SRC="$TMP/src"
mkdir -p "$SRC"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    step "copying the work tree of $ROOT (tracked + untracked, not ignored) to $SRC"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
        | tar -xf - -C "$SRC"
else
    step "copying $ROOT to $SRC"
    cp -a "$ROOT/." "$SRC"
    rm -rf "$SRC/.venv" "$SRC/build"
fi
[ -f "$SRC/pyproject.toml" ] || fail "copy of $ROOT has no pyproject.toml"

CONSTRAINTS=()
if [ -f "$ROOT/constraints.txt" ]; then
    CONSTRAINTS=(-c "$ROOT/constraints.txt")
    step "using constraints $ROOT/constraints.txt"
fi

step "creating a fresh venv ($("$PY" --version 2>&1)) in $TMP/venv"
"$PY" -m venv "$TMP/venv" || fail "python -m venv failed"
VPY="$TMP/venv/bin/python"

# torch pinned (the CPU build); never unpinned, which would pull a multi-GB CUDA build
step "pip install torch==2.13.0 setuptools wheel ninja"
pip_step "${CONSTRAINTS[@]}" torch==2.13.0 setuptools wheel ninja || fail "installing torch==2.13.0 failed"

step "pip install --no-build-isolation '$SRC[models]'  (builds the native extension)"
pip_step --no-build-isolation "${CONSTRAINTS[@]}" "$SRC[models]" || fail "pip install 'quasr[models]' failed"

# run from outside the source tree, offline, on an empty model cache and an empty hub cache
cd "$TMP"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$TMP/hf" QUASR_CACHE="$TMP/cache"

step "checking the installed package"
"$VPY" - <<'EOF' || fail "the installed quasr is incomplete (see above)"
import importlib.util, sys
import quasr, quasr._C  # noqa: F401  (the native extension was built)
from quasr.readers.moonshine_ort import bundled_tokenizer
if importlib.util.find_spec("moonshine_onnx") is not None:
    sys.exit("moonshine_onnx is installed in the fresh venv: this check would not prove quasr[models] is enough")
print(f"  quasr from {quasr.__file__}; Moonshine tokenizer {bundled_tokenizer()} (sha256 ok)")
EOF

for model in $MODELS; do
    step "quasr eval $model on $CLIPS English prompts (converting on first use)"
    out="$TMP/eval-$model.json"
    "$TMP/venv/bin/quasr" eval "$model" --data "$SPEECH/prompts" --language en --limit "$CLIPS" --json --transcripts \
        >"$out" 2>"$TMP/eval-$model.err" || { tail -n 30 "$TMP/eval-$model.err" >&2; fail "quasr eval $model exited non-zero"; }
    "$VPY" - "$out" "$model" "$CLIPS" "$MAX_WER" <<'EOF' || fail "$model: transcripts wrong (see above)"
import json, sys
path, model, clips, max_wer = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
r = json.loads(open(path).read().strip().splitlines()[-1])
for t in r["transcripts"]:
    print(f"  ref: {t['ref']!r}\n  hyp: {t['hyp']!r}")
problems = []
if r["n_clips"] != clips:
    problems.append(f"{r['n_clips']} clips evaluated, expected {clips}")
if any(not t["hyp"].strip() for t in r["transcripts"]):
    problems.append("an empty transcript")
if not r["wer"] < max_wer:
    problems.append(f"WER {r['wer']:.1f}% is not below {max_wer:g}%")
print(f"  {model}: WER {r['wer']:.1f}% on {r['n_clips']} clips, {r['size_mb']:.0f} MB")
if problems:
    sys.exit(f"{model}: " + "; ".join(problems))
EOF
done

# Wav2Vec2 has no real checkpoint reachable here: a small random-init CTC model saved as a Hugging
# Face folder must still load, quantize and transcribe through the installed CLI (the family's path).
step "wav2vec2: a random-init CTC folder through quasr quantize + transcribe"
"$VPY" - "$TMP/w2v" <<'EOF' || fail "could not build the wav2vec2 test folder"
import json, sys
from pathlib import Path
from transformers import (Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC,
                          Wav2Vec2Processor)
out = Path(sys.argv[1]); out.mkdir()
vocab = ["<pad>", "<s>", "</s>", "<unk>", "|"] + list("ETAONIHSRDLUMWCFGYPBVK'XJQZ")
(out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(vocab)}))
cfg = Wav2Vec2Config(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, conv_dim=(32, 32, 32), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, pad_token_id=0)
Wav2Vec2ForCTC(cfg).save_pretrained(out)
tok = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), unk_token="<unk>", pad_token="<pad>", word_delimiter_token="|")
Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000),
                  tokenizer=tok).save_pretrained(out)
EOF
clips=("$SPEECH"/prompts/audio/*.flac)  # a glob, sorted: `find | sort | head` dies of SIGPIPE under pipefail
clip="${clips[0]}"
[ -f "$clip" ] || fail "no .flac clip in $SPEECH/prompts/audio"
"$TMP/venv/bin/quasr" quantize "$TMP/w2v" --bits 4 --group-size 32 --out "$TMP/w2v-q" >"$TMP/w2v.log" 2>&1 \
    || { tail -n 20 "$TMP/w2v.log" >&2; fail "quasr quantize of the wav2vec2 folder failed"; }
"$TMP/venv/bin/quasr" transcribe "$TMP/w2v-q" "$clip" --json >"$TMP/w2v.json" 2>>"$TMP/w2v.log" \
    || { tail -n 20 "$TMP/w2v.log" >&2; fail "quasr transcribe with the quantized wav2vec2 folder failed"; }
step "  wav2vec2 (random weights, so no WER): $(head -c 200 "$TMP/w2v.json")"

step "OK: a fresh 'pip install quasr[models]' transcribes with: $MODELS, and the wav2vec2 family runs"
