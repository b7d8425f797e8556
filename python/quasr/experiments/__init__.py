"""Experiments that quantize and evaluate many times over: `sweep.py` (`quasr sweep CONFIG.yaml`: models x
methods x configurations x datasets, resumable cells) and `personalisation.py` (`quasr experiment`:
calibrating on one language, gender or speaker and evaluating on each)."""
