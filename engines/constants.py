"""Names and sizes every layer shares: backends, precisions, devices, engine profile ranges.

One definition, imported by the command line, the stages and the engines (they
used to keep three copies that drifted apart).
"""
from __future__ import annotations

#: ``auto`` picks one on the machine (engines.load.choose_backend)
BACKENDS = ("auto", "onnxruntime", "openvino", "torch", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
DEVICES = ("cpu", "cuda")

#: which precisions each backend runs, per device
SUPPORTED = {
    ("onnxruntime", "cpu"): ("fp32", "int8"),            # int8: the QDQ graph <stem>.int8.onnx
    ("openvino", "cpu"): ("fp32", "bf16", "int8"),       # bf16 only where the CPU has it; int8: QDQ graph
    ("torch", "cpu"): ("fp32",),
    ("torch", "cuda"): ("fp32", "fp16"),
    ("tensorrt", "cuda"): ("fp32", "fp16", "int8"),
}

#: frame sizes (w, h) a learned stage's engine or parity profile covers: min, opt, max.
#: The network input is the stage's working size of these (internal scale, stride).
FRAME_SIZES = ((32, 32), (640, 360), (1920, 1088))

#: default TensorRT profile of ``build-engine``: batch 1..8, 240p..1080p network inputs
DEFAULT_PROFILE = {"batch": (1, 1, 8), "height": (240, 360, 1088), "width": (320, 640, 1920)}

#: H and W of both networks' inputs must be multiples of this (training.models.*.STRIDE)
NETWORK_STRIDE = 4
