"""The kernel seam: op schemas declared once in Python (`schemas`), their plain-torch references
(`reference`), the backends that implement them (`registry`: native CPU, the reference; Triton and
CUDA plug in here), and the one dispatcher that picks backend and path per call (`dispatch`) from a
measured table kept as data (`tables/`), overridable by QUASR_KERNEL or `forced(...)`."""

from . import schemas  # noqa: F401  (defines torch.ops.quasr.* before any backend registers)
from .dispatch import Choice, choose, forced, machine_kind, table_path
from .registry import BACKENDS, available_backends

__all__ = ["BACKENDS", "Choice", "available_backends", "choose", "forced", "machine_kind", "table_path"]
