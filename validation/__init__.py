"""Statistical validation of the models: simulation-based calibration, coverage, agreement with
the frequentist standard, and reference posteriors. Run everything with `python -m validation.run --all`.
"""
