"""Triton Inference Server Python-backend model over the trtkv `AsyncEngine` (decoupled).

`trtkv triton-repo` copies this file to ``REPO/NAME/1/model.py``; Triton imports it inside
its Python stub, where ``triton_python_backend_utils`` exists.

Inputs, as Triton's vLLM backend and TensorRT-LLM's ensemble name them (all optional, but
one of ``text_input`` / ``input_ids``):
    text_input           STRING [1]   the prompt as text (the model's tokenizer encodes it)
    input_ids            INT32 [-1]   the prompt as token ids
    stream               BOOL [1]     true: one response per engine step; false (default): one
    max_tokens           INT32 [1]    tokens to generate (default: the model's, see SamplingDefaults)
    temperature FP32, top_p FP32, top_k INT32, seed INT64, ignore_eos BOOL   [1] each
    sampling_parameters  STRING [1]   a JSON object of the above and min_tokens, stop,
                                      repetition_penalty, presence_penalty, frequency_penalty
Outputs, in every response: ``text_output`` STRING [1] (the text this response adds),
``output_ids`` INT32 [-1] (its tokens) and ``finish_reason`` STRING [1] ("" until the last).
Tensors cross the boundary as numpy arrays (``as_numpy``, ``pb_utils.Tensor``): the Python
stub must run with the numpy it was built against (NGC containers match; nvidia-pytriton's
stub wants numpy < 2, see tests/serving/test_triton.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

from trtkv.errors import TrtkvError
from trtkv.runtime.async_engine import AsyncEngine
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.sampling import SamplingDefaults, SamplingParams

#: sampling_parameters keys -> SamplingParams fields (the wire names are vLLM's / OpenAI's).
_SAMPLING_KEYS = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p",
                  "top_k": "top_k", "seed": "seed", "ignore_eos": "ignore_eos", "min_tokens": "min_tokens",
                  "stop": "stop", "repetition_penalty": "repetition_penalty", "min_p": "min_p",
                  "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_SCALAR_INPUTS = {"max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int,
                  "ignore_eos": bool}


class BadRequest(ValueError):
    """A request this model cannot run; its message goes back to the client."""


def _tensor(request: Any, name: str) -> Any:
    return pb_utils.get_input_tensor_by_name(request, name)


def _numbers(request: Any, name: str) -> np.ndarray | None:
    tensor = _tensor(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


def _text(request: Any, name: str) -> str | None:
    tensor = _tensor(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise BadRequest(f"input '{name}' holds {values.size} strings; send one")
    value = values[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise BadRequest(f"input '{name}' is not UTF-8 text") from None


def _ids_output(ids: Any) -> Any:
    return pb_utils.Tensor("output_ids", np.asarray(ids, dtype=np.int32))


def _str_output(name: str, text: str) -> Any:
    return pb_utils.Tensor(name, np.array([text.encode("utf-8")], dtype=np.object_))


def sampling_params(request: Any, defaults: SamplingDefaults) -> tuple[SamplingParams, bool]:
    """The request's sampling parameters (what it leaves out: ``defaults``) and whether it
    streams."""
    fields: dict[str, Any] = {}
    raw = _text(request, "sampling_parameters")
    if raw is not None:
        try:
            given = json.loads(raw)
        except ValueError:
            raise BadRequest("sampling_parameters must be a JSON object") from None
        if not isinstance(given, dict):
            raise BadRequest("sampling_parameters must be a JSON object")
        unknown = sorted(set(given) - set(_SAMPLING_KEYS))
        if unknown:
            raise BadRequest(f"sampling_parameters: unknown keys {unknown}; known: {sorted(_SAMPLING_KEYS)}")
        fields.update({_SAMPLING_KEYS[k]: v for k, v in given.items()})
        if isinstance(fields.get("stop"), str):
            fields["stop"] = [fields["stop"]]
    for name, kind in _SCALAR_INPUTS.items():
        value = _numbers(request, name)
        if value is not None:
            fields[_SAMPLING_KEYS[name]] = kind(value[0].item())
    stream = _numbers(request, "stream")
    return defaults.params(**fields), bool(stream[0]) if stream is not None else False


class TritonPythonModel:
    """Triton's model contract: initialize, execute (decoupled: respond via senders), finalize."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        # Relative to the model's folder in the repository, so the repository can move.
        model_dir = Path(args["model_repository"]) / params["model_dir"]["string_value"]
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
            text, ids = _text(request, "text_input"), _numbers(request, "input_ids")
            if (text is None) == (ids is None):
                raise BadRequest("give one of 'text_input' (STRING) and 'input_ids' (INT32 token ids)")
            params, stream = sampling_params(request, self.engine.sampling_defaults)
            prompt: str | list[int] = text if text is not None else ids.tolist()  # type: ignore[union-attr]
            pieces: list[str] = []
            tokens: list[int] = []
            async for out in self.engine.generate(prompt, params):
                c = out.outputs[0]
                if stream:
                    sender.send(self._response(c.new_text, c.new_token_ids, c.finish_reason or ""))
                else:
                    pieces.append(c.new_text)
                    tokens.extend(c.new_token_ids)
                    if out.finished:
                        sender.send(self._response("".join(pieces), tokens, c.finish_reason or ""))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except (BadRequest, TrtkvError, TypeError) as exc:  # the client's to fix: no traceback
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # a bug: still one final response, with the error
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"internal error: {exc!r}")),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _response(text: str, ids: Any, finish_reason: str) -> Any:
        return pb_utils.InferenceResponse([_str_output("text_output", text), _ids_output(ids),
                                           _str_output("finish_reason", finish_reason)])

    def finalize(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self.engine.shutdown(), self.loop)
        future.result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
