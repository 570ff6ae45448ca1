"""The ONNX model a TensorRT build parses, and the check that the trtkv ops became what we asked.

Two attention routes from the same exported ``model.onnx``:

- ``plugin``: the file as exported; TensorRT's ONNX parser maps every ``trtkv::`` node to the
  plugin registered under namespace ``trtkv`` (libtrtkv_plugins.so). The parser would
  silently inline the node's ONNX function body when no creator matches, so after parsing
  `check_trtkv_layers` requires exactly one plugin layer per trtkv node and names the nodes
  that fell back otherwise.
- ``lowered``: the trtkv nodes' function bodies are replaced by the shape-static ones of
  `trtkv.ops.lowered` (no NonZero, no data-dependent extents, fp8 through Q/DQ) and inlined
  here, so the engine holds only standard layers; `check_trtkv_layers` requires that no
  trtkv node and no plugin layer is left.

The plugin route also adds one engine input, ``attention_workspace`` (int64 words), as a 10th
input of every PagedAttention node: the runtime plans the step's FlashInfer attention once on
the host into it (plugins/tensorrt/attention_plan.h) and every layer runs with that plan.

In both routes the KV pool is a read-only engine input: the engine never writes it. KVAppend
(plugin or lowered) outputs the step's stored codes and the runtime copies them into the pool
at ``slot_mapping`` after the step, O(new tokens), as on ONNX Runtime.

Must not import tensorrt at module import time, nor torch.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnx.inliner

from trtkv.errors import ModelDirError
from trtkv.manifest import Manifest, kv_graph_values, set_kv_width
from trtkv.ops.lowered import LOWERED_POOL_TYPES, lowered_op_functions
from trtkv.ops.schema import OP_DOMAIN, OPS, PLUGIN_NAMESPACE

ATTENTION_ROUTES = ("plugin", "lowered")
#: Engine input of plugin engines: the runtime's per-step attention plan workspace (int64 words).
ATTENTION_WORKSPACE_INPUT = "attention_workspace"


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What the parsed network holds: layer counts by type and the trtkv plugin layers."""

    num_layers: int
    layer_types: dict[str, int]
    plugin_layers: tuple[str, ...]
    """Names of the plugin layers of namespace ``trtkv``."""


def load_for_tensorrt(onnx_dir: Path, manifest: Manifest, attention: str) -> tuple[onnx.ModelProto, list[str]]:
    """The exported model, prepared for ``attention`` (see module docstring), and the names of
    its trtkv nodes as exported (read before lowering inlines them).

    Raises:
        ModelDirError: the ONNX file cannot be read or holds no trtkv nodes.
    """
    path = onnx_dir / manifest.onnx_file
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:
        raise ModelDirError(f"cannot read {path} ({exc}); re-export the model with `trtkv export`") from exc
    nodes = trtkv_node_names(model)
    if not nodes:
        raise ModelDirError(f"{path} holds no trtkv::PagedAttention / KVAppend node; export it with `trtkv export`")
    set_kv_width(model.graph, manifest.pool_head_dim)
    if attention == "lowered":
        _lower(model, manifest)
    else:
        _add_attention_workspace(model)
    return model, nodes


def _add_attention_workspace(model: onnx.ModelProto) -> None:
    """Give every PagedAttention node the runtime's plan workspace as a 10th input."""
    model.graph.input.append(onnx.helper.make_tensor_value_info(
        ATTENTION_WORKSPACE_INPUT, onnx.TensorProto.INT64, ["attention_workspace_words"]))
    for node in model.graph.node:
        if node.domain == OP_DOMAIN and node.op_type == "PagedAttention":
            node.input.append(ATTENTION_WORKSPACE_INPUT)


def trtkv_node_names(model: onnx.ModelProto) -> list[str]:
    """Names of the main graph's trtkv nodes, in graph order."""
    return [node.name for node in model.graph.node if node.domain == OP_DOMAIN]


def _lower(model: onnx.ModelProto, manifest: Manifest) -> None:
    """Swap in the shape-static bodies and inline them (unique layer names per call site)."""
    num_scales = len(manifest.k_scales[0]) if manifest.k_scales else 1
    del model.functions[:]
    model.functions.extend(lowered_op_functions(manifest.kv_dtype, num_scales=num_scales,
                                                dynamic=manifest.dynamic_kv_scales))
    pool_type = LOWERED_POOL_TYPES.get(manifest.kv_dtype)
    if pool_type is not None:
        for value in kv_graph_values(model.graph)[0]:
            value.type.tensor_type.elem_type = pool_type
    inlined = onnx.inliner.inline_local_functions(model)
    model.CopyFrom(inlined)
    left = trtkv_node_names(model)
    assert not left, f"trtkv nodes left after inlining: {left}"


def report_layers(trt: Any, network: Any) -> LayerReport:
    """Layer counts of a parsed network and its trtkv plugin layers."""
    types: Counter[str] = Counter()
    plugins: list[str] = []
    plugin_v3 = getattr(trt.LayerType, "PLUGIN_V3", None)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        types[str(layer.type).rsplit(".", 1)[-1]] += 1
        if plugin_v3 is not None and layer.type == plugin_v3:
            layer.__class__ = trt.IPluginV3Layer
            plugin = layer.get_plugin()
            namespace = getattr(plugin, "plugin_namespace", "")
            if namespace == PLUGIN_NAMESPACE:
                plugins.append(layer.name)
    return LayerReport(network.num_layers, dict(sorted(types.items())), tuple(plugins))


def check_trtkv_layers(trt: Any, report: LayerReport, expected_nodes: list[str], attention: str, onnx_path: Path) -> None:
    """Fail loudly when the trtkv ops did not become what ``attention`` asks for.

    Raises:
        ModelDirError: a trtkv node fell back to its ONNX function body (plugin route), or a
            plugin layer appeared in a lowered network.
    """
    if attention == "lowered":
        if report.plugin_layers:
            raise ModelDirError(f"lowered build of {onnx_path} holds trtkv plugin layers {list(report.plugin_layers)}")
        return
    missing = [name for name in expected_nodes if name not in report.plugin_layers]
    if missing or len(report.plugin_layers) != len(expected_nodes):
        registry = trt.get_plugin_registry()
        absent = [op for op in OPS if _find_creator(registry, op) is None]
        why = (f"no creator for {', '.join(f'{PLUGIN_NAMESPACE}::{op} v1' for op in absent)} is registered "
               "(is libtrtkv_plugins.so built for this TensorRT and loaded?)") if absent else \
            "the parser did not use the registered creators"
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelDirError(
            f"{len(missing)} of {len(expected_nodes)} trtkv nodes fell back to their ONNX function bodies "
            f"instead of plugins ({shown}): {why}; build the plugins or use --attention lowered"
        )


def require_creators(trt: Any, plugin_path: Path) -> None:
    """Before parsing (plugin route): every trtkv op has a creator in TensorRT's registry.

    Raises:
        ModelDirError: one is missing; names it and the library that should have provided it.
    """
    registry = trt.get_plugin_registry()
    absent = [op for op in OPS if _find_creator(registry, op) is None]
    if absent:
        raise ModelDirError(
            f"{plugin_path} registered no creator for {', '.join(f'{PLUGIN_NAMESPACE}::{op} v1' for op in absent)}; "
            "rebuild it for this TensorRT (plugins/README.md) or use --attention lowered"
        )


def _find_creator(registry: Any, op: str) -> Any:
    for getter in ("get_creator", "get_plugin_creator"):
        if hasattr(registry, getter):
            try:
                return getattr(registry, getter)(op, "1", PLUGIN_NAMESPACE)
            except Exception:
                return None
    return None


__all__ = ["ATTENTION_ROUTES", "ATTENTION_WORKSPACE_INPUT", "LayerReport", "check_trtkv_layers", "load_for_tensorrt",
           "report_layers", "require_creators", "trtkv_node_names"]
