"""The head profiler: ``python -m redknot_sglang.profile --model-path M --out M.heads.json``."""
