"""fp16 copy of an fp32 ONNX graph, for strongly typed TensorRT (11.x, TensorRT-RTX).

A strongly typed network runs each tensor in the type the graph gives it, so
"build in fp16" means "build an fp16 graph". The conversion is ONNX Runtime's
own float16 converter (``onnxruntime.transformers.float16``, shipped with the
runtime): weights and activations become float16; inputs and outputs stay
float32 (``keep_io_types``) with Casts at the edges, so callers feed and read
the same arrays as from the fp32 graph. Ops that are unsafe in half (none in
our two networks today) can be listed in ``keep_fp32`` and stay in float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def onnx_fp16(src: str | Path, dst: str | Path, keep_fp32: Sequence[str] = ()) -> Path:
    """Write the fp16 copy of ``src`` to ``dst`` (temporary name, then rename) and check it."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_fp32) or None)
    _sort_nodes(half.graph)  # the converter appends the Casts at the graph's ports last
    onnx.checker.check_model(half)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save(half, str(tmp))
    tmp.replace(dst)
    return dst


def _sort_nodes(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (ONNX requires it)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an input no node produces")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if not any(n is r for r in ready)]
    nodes = [type(n)() for n in ordered]
    for new, old in zip(nodes, ordered):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)
