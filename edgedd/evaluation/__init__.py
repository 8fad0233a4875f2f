"""Evaluation: frozen encoders, probes trained on synthetic and real sets, baselines, the report page."""
