"""Serving: an OpenAI-compatible HTTP server over `trtkv.runtime.async_engine.AsyncEngine`.

Module map (each owns one thing):

- ``config``: `ServerConfig`, the `trtkv serve` options (frozen dataclass).
- ``protocol``: OpenAI request bodies -> `GenerateRequest` (prompt + `SamplingParams`);
  `ApiError` and the status of each engine error (queue_full -> 429; too_long and
  kv_capacity -> 400, since retrying cannot help).
- ``responses``: engine outputs -> OpenAI bodies, SSE chunks, logprobs, usage.
- ``prometheus``: `/metrics` names and text rendering.
- ``app``: `OpenAIServer`, the aiohttp routes, auth, body limit, streaming, disconnects.
- ``server``: process lifecycle (create the engine, listen, graceful shutdown).
- ``triton``: ``trtkv triton-repo``, a Triton Inference Server model repository.
- ``triton_model``: the Triton Python-backend model (copied into the repository; importable
  only inside Triton's stub).
- ``cli``: the ``trtkv serve`` and ``trtkv triton-repo`` subcommands.

Only ``app`` and ``server`` import aiohttp (the ``serve`` extra; ``cli`` checks for it first).
"""
