"""The device side of edgedd: imports only numpy, onnxruntime and safetensors (Pillow to decode
image files). Never torch or timm; ``tests/test_device_light.py`` proves it."""
