"""edgedd: dataset distillation on frozen self-supervised backbones, packaged for the edge.

The host side (``edgedd.distill`` and friends) needs the ``host`` extra (torch, timm); the device
side needs only numpy, onnxruntime and safetensors. Importing this package imports neither.
"""

__version__ = "0.1.0"
