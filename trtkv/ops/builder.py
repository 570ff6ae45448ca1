"""A small ONNX graph builder: unique names, one-line node emission, constants.

Used by the exporter (model graphs, weights as initializers) and by the op function bodies
(where constants must be Constant nodes). Knows nothing about models or trtkv ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

OPSET = 19  # Cast with saturate (float8) and the float8 types need opset 19.

_ATTR_TYPES = {
    "float": AttributeProto.FLOAT,
    "int": AttributeProto.INT,
    "string": AttributeProto.STRING,
}


class GraphBuilder:
    """Collects nodes and initializers; ``op`` returns the output name(s) it created."""

    def __init__(self, prefix: str = "", *, constants_as_nodes: bool = False) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._constants_as_nodes = constants_as_nodes
        self._counter = 0
        self._const_cache: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{self.prefix}{hint}_{self._counter}"

    def op(
        self,
        op_type: str,
        *inputs: str,
        outputs: int | list[str] = 1,
        domain: str = "",
        name: str | None = None,
        **attrs: Any,
    ) -> Any:
        """Emit one node. Returns its output name, or a list when ``outputs`` asks for several."""
        if isinstance(outputs, int):
            out_names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        else:
            out_names = list(outputs)
        node = helper.make_node(
            op_type, list(inputs), out_names, name=name or self.fresh(op_type), domain=domain, **attrs
        )
        self.nodes.append(node)
        return out_names[0] if len(out_names) == 1 else out_names

    def attr_const(self, attr_name: str, kind: str) -> str:
        """A Constant whose value is the enclosing function's attribute ``attr_name``."""
        attr = AttributeProto()
        attr.name = {"float": "value_float", "int": "value_int"}[kind]
        attr.ref_attr_name = attr_name
        attr.type = _ATTR_TYPES[kind]
        out = self.fresh(attr_name)
        node = helper.make_node("Constant", [], [out], name=self.fresh("Const"))
        node.attribute.append(attr)
        self.nodes.append(node)
        return out

    def const(self, value: Any, dtype: Any = None, name: str | None = None) -> str:
        """A constant tensor (deduplicated by value)."""
        arr = np.asarray(value, dtype=dtype)
        key = (str(arr.dtype), arr.tobytes(), arr.shape)
        if name is None and key in self._const_cache:
            return self._const_cache[key]
        out = name or self.fresh("const")
        if self._constants_as_nodes:
            self.nodes.append(
                helper.make_node(
                    "Constant", [], [out], name=self.fresh("Const"),
                    value=numpy_helper.from_array(arr, out),
                )
            )
        else:
            self.initializers.append(numpy_helper.from_array(arr, out))
        if name is None:
            self._const_cache[key] = out
        return out

    def initializer(self, array: np.ndarray, name: str, onnx_dtype: int | None = None) -> str:
        """A named weight. ``onnx_dtype`` lets bfloat16/float8 arrays keep their ONNX type."""
        if onnx_dtype is None:
            tensor = numpy_helper.from_array(array, name)
        else:
            tensor = helper.make_tensor(name, onnx_dtype, array.shape, array.tobytes(), raw=True)
        self.initializers.append(tensor)
        return name

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, dtype=np.int64))

    def scalar(self, value: float | int, dtype: Any) -> str:
        return self.const(np.array(value, dtype=dtype))
