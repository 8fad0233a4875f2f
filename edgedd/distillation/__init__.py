"""Distillation: Stage I (real statistics), Stage II (the synthetic pyramid), the run directory."""
