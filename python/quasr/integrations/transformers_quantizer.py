"""quasr checkpoints in transformers' own `from_pretrained`, `pipeline` and `save_pretrained`.

Registered through transformers' public extension points (`register_quantization_config`,
`register_quantizer`) when quasr is imported. A checkpoint's config.json carries
`quantization_config = {"quant_method": "quasr", "plan": ...}`: the quantizer swaps the empty
packed modules in before the weights are read (no float weight of a quantized layer is ever
materialised), then checks every loaded tensor against the sha256 digests saved with it.

`QuasrConfig(bits=4)` passed to `from_pretrained` of a float model quantizes it on load (RTN, the
`quasr quantize --bits` recipe without calibration audio); its `save_pretrained` writes a
checkpoint that loads back bit-exactly.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .. import __version__
from ..format import SUPPORTED_BITS
from ..integrity import check_finite_model, json_digest, tensor_digest
from ..plan.schema import default_group_size

QUANT_METHOD = "quasr"
DIGESTS_KEY = "quasr_sha256"  # safetensors metadata written by save_pretrained: tensor name -> sha256
CONFIG_KEYS = ("plan", "bits", "group_size", "symmetric", "keep", "clip", "format_version", "quasr_version")


class QuasrQuantizationError(ValueError):
    pass


@register_quantization_config(QUANT_METHOD)
class QuasrConfig(QuantizationConfigMixin):
    """What a quasr model is (`plan`: per-layer bits, group size, method transforms; as in
    quasr_plan.json) or, for a float model loaded with it, how to quantize it (`bits`, `group_size`
    (default as `quasr quantize --bits`: 64 at 2-4 bits, 128 above), `symmetric`, `keep` globs, weight `clip`)."""

    def __init__(self, plan: dict | None = None, bits: int | None = None, group_size: int | None | str = "auto",
                 symmetric: bool = False, keep: list[str] | tuple[str, ...] = (), clip: str = "mse",
                 format_version: int | None = None, quasr_version: str | None = None, **kwargs):
        from ..serialize import FORMAT_VERSION

        unknown = sorted(set(kwargs) - {"quant_method"})
        if unknown:
            raise QuasrQuantizationError(f"quantization_config: unknown quasr field(s) {unknown} (this quasr knows "
                                         f"{list(CONFIG_KEYS)}); the checkpoint needs a newer quasr: upgrade it")
        if plan is None and bits is None:
            raise QuasrQuantizationError("QuasrConfig needs bits (to quantize a float model on load, e.g. "
                                         "QuasrConfig(bits=4)) or the plan of a quasr checkpoint")
        if plan is not None and not (isinstance(plan, dict) and isinstance(plan.get("layers"), dict)):
            raise QuasrQuantizationError("quantization_config.plan must be a quasr plan ({'layers': {...}}); the "
                                         "config.json is corrupt: re-create the checkpoint with `quasr quantize`")
        if group_size == "auto" and bits in SUPPORTED_BITS:  # the group `quasr quantize --bits` uses
            group_size = default_group_size(bits)
        self.quant_method = QUANT_METHOD
        self.plan = plan
        self.bits, self.group_size, self.symmetric, self.keep, self.clip = bits, group_size, symmetric, list(keep), clip
        self.format_version = FORMAT_VERSION if format_version is None else format_version
        self.quasr_version = quasr_version or __version__
        self.post_init()

    def post_init(self):
        from ..format import check_bits, resolve_group_size
        from ..quantize import CLIP_METHODS
        from ..serialize import READABLE_VERSIONS

        if self.format_version not in READABLE_VERSIONS:
            raise QuasrQuantizationError(f"quasr format version {self.format_version!r} is not readable by quasr "
                                         f"{__version__} (it reads {list(READABLE_VERSIONS)}): upgrade quasr")
        if self.plan is None:
            try:
                check_bits(self.bits)
                resolve_group_size(self.group_size, 32)
            except ValueError as exc:
                raise QuasrQuantizationError(f"QuasrConfig: {exc}") from None
            if self.clip not in CLIP_METHODS or self.clip == "hessian":
                raise QuasrQuantizationError(f"QuasrConfig: clip must be one of {[c for c in CLIP_METHODS if c != 'hessian']} "
                                             f"on load (hessian clipping needs calibration audio: run `quasr quantize --calib`)")


def checkpoint_config(plan: dict) -> QuasrConfig:
    """The quantization_config quasr writes beside a quantized model."""
    return QuasrConfig(plan=plan)


@register_quantizer(QUANT_METHOD)
class QuasrHfQuantizer(HfQuantizer):
    requires_calibration = False  # QuasrConfig(bits=...) quantizes on load with RTN, no audio needed

    def __init__(self, quantization_config: QuasrConfig, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self._checkpoint_files: list[str] = []

    def validate_environment(self, *args, device_map=None, **kwargs):
        if isinstance(device_map, dict) and len({str(v) for v in device_map.values()}) > 1:
            raise QuasrQuantizationError(f"a quasr model loads on one device, not split over {sorted({str(v) for v in device_map.values()})}: "
                                         f"pass device_map='cpu' or 'cuda', or none and call .to(device)")
        if self.pre_quantized and self.quantization_config.plan is None:
            raise QuasrQuantizationError("config.json's quantization_config says quasr but holds no plan: the folder "
                                         "is not a quasr checkpoint; re-create it with `quasr quantize`")

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not self.pre_quantized:
            return model
        from ..plan import empty_swap

        self._checkpoint_files = list(checkpoint_files or [])
        _tie_now(model)
        try:
            empty_swap(model, self.quantization_config.plan)
        except (ValueError, KeyError) as exc:
            raise QuasrQuantizationError(f"{model.config.name_or_path}: the quasr plan does not fit the model config: {exc}") from None
        _drop_replaced_ties(model)
        _skip_weight_init_around_packed(model)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from ..nn import prepare_runtime

        if self.pre_quantized:
            _verify_loaded(model, self._checkpoint_files, self.quantization_config.plan)
        else:
            _quantize_on_load(model, self.quantization_config)
        return prepare_runtime(model)

    def get_state_dict_and_metadata(self, model):
        digests = {k: tensor_digest(v) for k, v in model.state_dict().items()}
        return None, {DIGESTS_KEY: json.dumps(digests, sort_keys=True)}

    def is_serializable(self):
        return True

    @property
    def is_trainable(self):
        return False


def _tie_now(model) -> None:
    """transformers ties weights only after loading (model.tie_weights is a no-op while the model is
    built); tie the pairs now so a quantized output projection is found to serve its tied embedding
    (QuantTiedEmbedding) instead of leaving a float table to fill."""
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        parent, _, leaf = target.rpartition(".")
        setattr(model.get_submodule(parent), leaf, model.get_parameter(source))


def _drop_replaced_ties(model) -> None:
    """transformers re-ties the pairs in `all_tied_weights_keys` after loading; a pair whose
    parameter became a packed buffer (proj_out.weight) is served by the packed module now."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if not tied:
        return
    names = {n for n, _ in model.named_parameters()}
    model.all_tied_weights_keys = {t: s for t, s in tied.items() if t in names and s in names}


def _skip_weight_init_around_packed(model) -> None:
    """Random init of missing weights must not reach into packed layers (e.g. Wav2Vec2's init of
    feature_projection.projection.weight): mark packed modules and their parents as initialised,
    transformers' convention for quantized modules. Every loaded tensor is then verified against its
    digest, so nothing left uninitialised can pass."""
    from ..nn import QuantTiedEmbedding, _Packed

    for module in model.modules():
        children = list(module.children())
        if isinstance(module, (_Packed, QuantTiedEmbedding)) or any(isinstance(c, (_Packed, QuantTiedEmbedding)) for c in children):
            module._is_hf_initialized = True


def _stored_digests(files: list[str], plan: dict) -> tuple[dict[str, str], dict[str, str]] | None:
    """(digests, aliases) saved with the checkpoint: quasr_plan.json (quasr's own save; its plan must
    be config.json's) or the safetensors metadata transformers' save_pretrained wrote through us."""
    from safetensors import safe_open

    from ..serialize import PLAN_DIGEST_KEY, CheckpointError, _read_plan

    if not files:
        return None
    folder = Path(files[0]).parent
    with safe_open(files[0], "pt") as f:
        header = f.metadata() or {}
    if (folder / "quasr_plan.json").exists():
        info = _read_plan(folder)
        if "sha256" in info and header.get(PLAN_DIGEST_KEY) != json_digest(info):
            raise CheckpointError(f"{folder}: quasr_plan.json does not belong to model.safetensors (its digest "
                                  f"differs from the one stored with the tensors): it was edited or comes from another save")
        if json_digest(info["plan"]) != json_digest(plan):
            raise CheckpointError(f"{folder}: config.json's quantization_config holds a different plan from "
                                  f"quasr_plan.json: one was edited; re-create the checkpoint")
        if "sha256" in info:
            return info["sha256"], info.get("aliases", {})
    digests = {}
    for file in files:
        with safe_open(file, "pt") as f:
            raw = (f.metadata() or {}).get(DIGESTS_KEY)
        if raw is None:
            return None
        try:
            digests.update(json.loads(raw))
        except json.JSONDecodeError:
            raise CheckpointError(f"{file}: the {DIGESTS_KEY} metadata is corrupt") from None
    return digests, {}


def _verify_loaded(model, files: list[str], plan: dict) -> None:
    """Every tensor transformers loaded is the one quasr saved, bit for bit, and finite."""
    from ..serialize import CheckpointError

    where = str(Path(files[0]).parent) if files else model.config.name_or_path
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"{where}: tensors not restored from the checkpoint: {left[:4]}")
    stored = _stored_digests(files, plan)
    if stored is None:
        warnings.warn(f"{where}: no quasr digests were saved with these weights (not written by quasr or by "
                      f"save_pretrained of a quasr model), so they cannot be verified", stacklevel=4)
    else:
        digests, aliases = stored
        state = model.state_dict()
        uncovered = [k for k in state if k not in digests and aliases.get(k) not in digests]
        bad = [k for k in state if k not in uncovered and tensor_digest(state[k]) != digests.get(k, digests.get(aliases.get(k)))]
        if uncovered or bad:
            raise CheckpointError(f"{where}: {len(bad)} loaded tensor(s) differ from the saved ones ({bad[:4]}) and "
                                  f"{len(uncovered)} have no saved digest ({uncovered[:4]}): the checkpoint is "
                                  f"incomplete or corrupt; re-create or re-copy it")
    check_finite_model(model, where, CheckpointError)


def _quantize_on_load(model, config: QuasrConfig) -> None:
    """A float model loaded with QuasrConfig(bits=...): quantized in place, and the config then
    records the plan, so save_pretrained writes a checkpoint that loads as quantized."""
    from ..plan import current_plan, swap, uniform_plan
    from ..plan.swap import rtn_quantizer

    plan = uniform_plan(model, config.bits, config.group_size, config.symmetric, tuple(config.keep))
    swap(model, plan, rtn_quantizer(config.clip), progress=False)
    config.plan = current_plan(model)
