"""`EngineClient`: benchmark requests sent to an `AsyncEngine` in this process (no HTTP)."""

from __future__ import annotations

from pathlib import Path

from trtkv.bench.clients import STATUS_OK, BaseClient, Clock, RequestRecord, TargetInfo
from trtkv.bench.workload import RequestSpec
from trtkv.errors import RequestRejectedError, TrtkvError
from trtkv.runtime.async_engine import AsyncEngine
from trtkv.runtime.config import EngineConfig
from trtkv.runtime.engine import Engine
from trtkv.runtime.outputs import RequestOutput
from trtkv.runtime.sampling import SamplingParams


class EngineClient(BaseClient):
    """Drives an engine built from an exported model directory.

    Args:
        model_dir: exported model directory (`trtkv export -o ...`).
        engine_config: engine options; None = defaults.
    """

    def __init__(self, model_dir: str | Path, engine_config: EngineConfig | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.engine_config = engine_config or EngineConfig()
        self._engine: AsyncEngine | None = None

    async def open(self) -> TargetInfo:
        engine = Engine(self.model_dir, self.engine_config)  # ModelDirError says what is missing
        self._engine = AsyncEngine(engine)
        return TargetInfo(str(self.model_dir), self.model_dir.resolve().name,
                          vocab_size=engine.manifest.vocab_size,
                          max_model_len=engine.scheduler.config.max_model_len)

    async def send(self, spec: RequestSpec, record: RequestRecord, clock: Clock) -> None:
        assert self._engine is not None, "open() first"
        params = SamplingParams(max_new_tokens=spec.output_len, temperature=0.0, ignore_eos=True)
        record.start_s = clock()
        try:
            stream = await self._engine.add_request(list(spec.prompt_ids), params)
            last: RequestOutput | None = None
            async for out in stream:
                num_new = sum(len(c.new_token_ids) for c in out.outputs)
                if num_new:
                    record.add_chunk(clock(), num_new)
                last = out
            reasons = [c.finish_reason for c in last.outputs] if last is not None else []
            if reasons and all(r in ("length", "stop") for r in reasons):
                record.status = STATUS_OK
            else:
                record.fail(f"the engine ended the request with finish reasons {reasons}")
        except RequestRejectedError as exc:
            record.reject(exc.reason, str(exc))
        except TrtkvError as exc:
            record.fail(f"{type(exc).__name__}: {exc}")
        finally:
            record.end_s = clock()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.shutdown(0.0)
            self._engine = None
