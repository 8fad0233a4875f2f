"""Graphs for phones: fixed-shape copies of the backbone and ORT-format (``.ort``) files.

* Static batch: a phone accelerator's execution provider (NNAPI, CoreML) takes only nodes whose
  shapes are all known, so a backbone with a dynamic batch axis runs entirely on the CPU there.
  :func:`static_batch` fixes the batch axis with onnxruntime's own tool (the one its mobile
  checker points to, ``onnxruntime.tools.make_dynamic_shape_fixed``): the same nodes and weights,
  every intermediate shape fixed. No re-export, so the graph is the dynamic one with one number set.
* ORT format: ORT Mobile's minimal builds read only ``.ort`` files, and are built with just the
  operators a required-operators config lists. :func:`to_ort` runs onnxruntime's converter
  (``onnxruntime.tools.convert_onnx_models_to_ort``) on the bundle's graphs in a temporary
  directory, with the "runtime" optimisation style (the one ORT recommends where NNAPI or CoreML
  may run the model: basic optimisations only, so no CPU-only fused operators) for an ARM target
  (no x86-only NCHWc layout).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import onnx

from edgedd.core.errors import EdgeddError

ORT_CONFIG_FILE = "required_operators.config"


def static_batch(data: bytes, batch: int) -> bytes:
    """The graph ``data`` with its first input's batch axis fixed at ``batch`` (every use of that dim)."""
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    model = onnx.load_from_string(data)
    inp = model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    if not shape or any(s is None for s in shape[1:]):
        raise EdgeddError(
            f"the graph's input has shape {shape}; only its batch axis may be dynamic", "report this as a bug"
        )
    make_input_shape_fixed(model.graph, inp.name, [batch, *shape[1:]])
    fix_output_shapes(model)
    for meta in model.metadata_props:  # a batch-N graph says so in its metadata
        if meta.key == "edgedd.role":
            meta.value = f"{meta.value}_static"
    model.metadata_props.append(onnx.StringStringEntryProto(key="edgedd.static_batch", value=str(batch)))
    return model.SerializeToString(deterministic=True)


def to_ort(graphs: dict[str, bytes]) -> tuple[dict[str, bytes], bytes]:
    """``{name.onnx: bytes}`` -> ``({name.ort: bytes}, required-operators config)``.

    The converter prints progress on stdout; it goes to a buffer (edgedd keeps stdout for results)
    and is quoted in the error when the conversion fails.
    """
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    log = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="edgedd-ort-") as tmp:
        src, dst = Path(tmp) / "onnx", Path(tmp) / "ort"
        src.mkdir()
        for name, data in graphs.items():
            (src / name).write_bytes(data)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                convert_onnx_models_to_ort(
                    src, output_dir=dst, optimization_styles=[OptimizationStyle.Runtime], target_platform="arm"
                )
        except Exception as e:
            raise EdgeddError(
                f"onnxruntime cannot convert the graphs to ORT format ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''})",
                "pack without --ort, or report this as a bug",
            ) from e
        out = {}
        for name in graphs:
            made = dst / (name[: -len(".onnx")] + ".with_runtime_opt.ort")
            if not made.is_file():
                raise EdgeddError(
                    f"onnxruntime's ORT converter wrote no file for {name} "
                    f"({log.getvalue().strip().splitlines()[-1:]})",
                    "pack without --ort, or report this as a bug",
                )
            out[name[: -len(".onnx")] + ".ort"] = made.read_bytes()
        configs = sorted(dst.glob("*.config"))
        if len(configs) != 1:
            raise EdgeddError(
                f"onnxruntime's ORT converter wrote {len(configs)} required-operators configs, not one",
                "report this as a bug",
            )
        # the config names the files it was generated from by their temporary paths: keep the bare names
        lines = [
            f"# - {Path(line[4:]).name}" if line.startswith("# - ") else line
            for line in configs[0].read_text().splitlines()
        ]
        return out, ("\n".join(lines) + "\n").encode()
