"""Frozen timm backbones: loading, timm's preprocessing rules, the hub, the shipped zoo and EfficientNet-Lite."""
