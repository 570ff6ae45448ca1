"""`trtkv triton-repo`: write a Triton Inference Server model repository for a trtkv model.

Owns the repository layout (``REPO/NAME/config.pbtxt``, ``REPO/NAME/1/model.py``) and the
config text; the model itself is `trtkv.serving.triton_model`. Must not import
``triton_python_backend_utils`` (only Triton's stub has it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from trtkv.errors import ConfigError
from trtkv.manifest import Manifest
from trtkv.runtime.config import EngineConfig

CONFIG_TEMPLATE = """\
name: "{name}"
backend: "python"
max_batch_size: 0
# Decoupled: one request, many responses (one per engine step), then a final flag.
model_transaction_policy {{ decoupled: true }}
# The prompt: text_input (text) or input_ids (token ids). Sampling: the scalar inputs or a
# sampling_parameters JSON object (Triton's vLLM backend's name).
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "input_ids" data_type: TYPE_INT32 dims: [ -1 ] optional: true }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "max_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "temperature" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "top_p" data_type: TYPE_FP32 dims: [ 1 ] optional: true }},
  {{ name: "top_k" data_type: TYPE_INT32 dims: [ 1 ] optional: true }},
  {{ name: "seed" data_type: TYPE_INT64 dims: [ 1 ] optional: true }},
  {{ name: "ignore_eos" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }}
]
output [
  {{ name: "text_output" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "output_ids" data_type: TYPE_INT32 dims: [ -1 ] }},
  {{ name: "finish_reason" data_type: TYPE_STRING dims: [ 1 ] }}
]
# One instance: the trtkv engine batches requests itself (in-flight batching).
instance_group [ {{ kind: {kind} count: 1 }} ]
parameters [
  {{ key: "model_dir" value: {{ string_value: {model_dir} }} }},
  {{ key: "engine_config" value: {{ string_value: {engine_config} }} }}
]
"""


def write_triton_repo(model_dir: str | Path, repo_dir: str | Path, engine_config: EngineConfig,
                      name: str = "trtkv") -> Path:
    """Write ``repo_dir/name/{config.pbtxt, 1/model.py}`` serving ``model_dir``.

    Returns:
        The model's folder inside the repository.

    Raises:
        ModelDirError: ``model_dir`` is not an exported model.
        ConfigError: ``name`` is not a plain folder name.
    """
    model_dir = Path(model_dir).resolve()
    Manifest.load(model_dir, require_onnx=engine_config.backend != "tensorrt")  # fail here, not in tritonserver
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--model-name {name!r} must be a plain folder name, e.g. trtkv")
    folder = Path(repo_dir) / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(dataclasses.asdict(engine_config), sort_keys=True)
    # The model's path relative to its folder: the repository and the export move together.
    relative = os.path.relpath(model_dir, folder.resolve())
    kind = "KIND_GPU" if engine_config.backend == "tensorrt" else "KIND_CPU"
    (folder / "config.pbtxt").write_text(CONFIG_TEMPLATE.format(
        name=name, model_dir=json.dumps(relative), engine_config=json.dumps(config_json), kind=kind,
    ))
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), folder / "1" / "model.py")
    return folder
