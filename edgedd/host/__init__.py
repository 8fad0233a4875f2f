"""Torch pieces shared by distillation and evaluation: seeded randomness, augmentation, data loading, heads."""
