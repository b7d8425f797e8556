"""Mixed precision to a size budget: calibration audio -> sensitivity -> allocation -> clipping -> swap.

- `sensitivity.py`: per-layer scores (activation statistics, output distances, Fisher) and error
  tables from unlabelled calibration audio;
- `allocate.py`: the exact size model (`SizeModel`) and the allocators (myqasr, optimal, uniform,
  shuffled, reversed);
- `mixed.py`: the pipeline end to end (`Calibrator`, `quantize_to_budget`, `plot_bits`).
"""

from .allocate import ALLOCATIONS, MB, Allocation, BudgetError, SizeModel, allocate
from .mixed import Calibrator, MixedPrecisionResult, plot_bits, quantize_to_budget
from .sensitivity import DISTANCES, ERRORS, SCORES, STATISTICS, collect_statistics, error_table, sensitivity_scores

__all__ = ["ALLOCATIONS", "MB", "Allocation", "BudgetError", "SizeModel", "allocate", "Calibrator",
           "MixedPrecisionResult", "plot_bits", "quantize_to_budget", "DISTANCES", "ERRORS", "SCORES", "STATISTICS",
           "collect_statistics", "error_table", "sensitivity_scores"]
