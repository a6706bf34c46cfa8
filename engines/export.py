"""ONNX export of a PyTorch module (a Polygraphy-style named step: ``onnx_from_torch``).

Uses the TorchScript exporter (``dynamo=False``): it handles the dynamic H/W
axes of our convolutional models without tracing guards, and its graphs parse in
ONNX Runtime and TensorRT alike. The written file is checked with
``onnx.checker`` so a broken graph fails here, not at engine build.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    def __init__(self, path, cause: str):
        super().__init__(f"{path}: {cause}")
        self.input = str(path)
        self.cause = cause


def onnx_from_torch(
    module,
    example_inputs: Sequence,
    path: str | Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` (put in eval mode, on the CPU, fp32) to ``path`` and check the graph.

    ``dynamic_axes`` follows ``torch.onnx.export``: ``{"frames": {0: "batch", 2: "height", 3: "width"}}``.
    The file is written under a temporary name and renamed when complete.
    """
    import onnx
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose
        try:
            torch.onnx.export(
                module, tuple(example_inputs), str(tmp),
                input_names=list(input_names), output_names=list(output_names),
                dynamic_axes=dict(dynamic_axes or {}), opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise ExportError(path, f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise ExportError(path, f"exported graph fails onnx.checker: {e}") from e
    tmp.replace(path)
    return path
