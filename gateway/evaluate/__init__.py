"""Measuring the certainty: calibration metrics, cascade and guard curves, thresholds from data.

- `metrics`: ECE, Brier, AUROC, sharpness, reliability table (pure numpy).
- `sweep`, `curves`: what a pair of thresholds does; the cascade and risk-coverage curves.
- `tuner`, `policy_file`: thresholds that meet a target, written into a policy file.
- `dataset`, `judge`, `runner`: a labeled dataset answered and scored by the local model.
- `scores`: the SCORES.jsonl format every figure is computed from.
- `evaluation`, `plots`, `report`: metrics.json, the PNG pictures and report.html.
- `commands`: the `eval` and `tune` commands.
"""
