"""Triton Inference Server Python-backend model over the trtkv `AsyncEngine` (decoupled).

`trtkv triton-repo` copies this file to ``REPO/NAME/1/model.py``; Triton imports it inside
its Python stub, where ``triton_python_backend_utils`` exists. Tensors cross the boundary
through DLPack only: with numpy 2 the stub's numpy conversion (`as_numpy`, `Tensor(name,
array)`) reads wrong or empty buffers, while DLPack works with numpy 1 and 2.

Inputs: ``input_ids`` INT32 [-1]; optional ``max_tokens`` INT32 [1], ``temperature`` FP32 [1],
``seed`` INT64 [1], ``ignore_eos`` BOOL [1]. Output, one response per engine step:
``output_ids`` INT32 [-1], the tokens that step added; the final response carries the flag.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from trtkv.runtime.async_engine import AsyncEngine
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingParams


def _input(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.from_dlpack(tensor)


def _output(name: str, array: np.ndarray) -> Any:
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))


class TritonPythonModel:
    """Triton's model contract: initialize, execute (decoupled: respond via senders), finalize."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        model_dir = params["model_dir"]["string_value"]
        engine_config = EngineConfig(**json.loads(params["engine_config"]["string_value"]))
        self.engine = AsyncEngine(Engine(model_dir, engine_config))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="trtkv-loop", daemon=True)
        self.thread.start()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            asyncio.run_coroutine_threadsafe(self._serve(request), self.loop)
        return None

    async def _serve(self, request: Any) -> None:
        sender = request.get_response_sender()
        try:
            prompt = _input(request, "input_ids")
            if prompt is None:
                raise ValueError("input 'input_ids' (INT32 token ids) is required")
            max_tokens, temperature = _input(request, "max_tokens"), _input(request, "temperature")
            seed, ignore_eos = _input(request, "seed"), _input(request, "ignore_eos")
            params = SamplingParams(
                max_new_tokens=int(max_tokens.reshape(-1)[0]) if max_tokens is not None else 16,
                temperature=float(temperature.reshape(-1)[0]) if temperature is not None else 0.0,
                seed=int(seed.reshape(-1)[0]) if seed is not None else None,
                ignore_eos=bool(ignore_eos.reshape(-1)[0]) if ignore_eos is not None else False,
            )
            async for out in self.engine.generate(prompt.reshape(-1).tolist(), params):
                new_ids = np.asarray(out.outputs[0].new_token_ids, dtype=np.int32)
                sender.send(pb_utils.InferenceResponse([_output("output_ids", new_ids)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # every failure goes back to the client as the final response
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.engine.shutdown(), self.loop)
        future.result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
