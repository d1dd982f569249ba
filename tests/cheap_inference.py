"""Inference settings for tests whose subject is not the inference paths: one path, the
torch fp32 reference, timed a few times. tests/test_inference.py covers every path, and the
demo deployment test in tests/test_e2e_prefect.py runs the quick profile's paths as
`make demo` does."""

FAST_INFERENCE = {"paths": ["torch-fp32"], "timed_runs": 3, "min_timed_runs": 1, "warmup_runs": 1}
