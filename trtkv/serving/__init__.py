"""Serving: an OpenAI-compatible HTTP server over `trtkv.runtime.async_engine.AsyncEngine`.

Module map (each owns one thing):

- ``config``: `ServerConfig`, the `trtkv serve` options (frozen dataclass).
- ``protocol``: OpenAI request bodies -> `GenerateRequest` (prompt + `SamplingParams`);
  `ApiError` and the status of each engine error (queue_full -> 429; too_long and
  kv_capacity -> 400, since retrying cannot help).
- ``schema``: pydantic models of the request bodies (the published OpenAPI schema, and the
  first, type-level check of each body).
- ``tools``: tool calling (tool_choice plans, hermes / llama3_json call parsing).
- ``responses``: engine outputs -> OpenAI bodies, SSE chunks, logprobs, usage, tool calls.
- ``prometheus``: `/metrics` names and text rendering.
- ``app``: `OpenAIServer`, the FastAPI routes, auth, body limit and read timeout, streaming,
  disconnects.
- ``server``: process lifecycle on uvicorn (create the engine, listen, graceful shutdown).
- ``triton``: ``trtkv triton-repo``, a Triton Inference Server model repository.
- ``triton_model``: the Triton Python-backend model (copied into the repository; importable
  only inside Triton's stub).

Only ``app``, ``schema`` and ``server`` import FastAPI / pydantic / uvicorn (the ``serve``
extra; `trtkv.cli.serve` checks for it first).
"""
