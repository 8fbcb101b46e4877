"""Load test of `codelm serve` on loopback: latency and throughput at several concurrencies, with and without
continuous batching and prefix caching.

    python bench/serve.py --checkpoint RUN [--concurrency 1,4,16] [--max-tokens 32] [--prefix-tokens 500]
                          [--rate 0] [--configs sequential,batched,batched+prefix] [--quantize int8]
                          [--reference-gguf FILE --reference-python PYTHON]

Each config starts its own `codelm serve` (a subprocess, fp32 unless --dtype, --quantize int8 if asked) on a free
loopback port: sequential is --max-seqs 1 --no-prefix-caching (request by request, what a server without batching
does), batched is continuous batching with --no-prefix-caching, batched+prefix the defaults. Clients send streamed
/v1/completions whose prompts share a --prefix-tokens prefix (a system prompt, a file being edited) followed by a
short unique tail; at most `concurrency` requests are in flight, new ones arrive as a Poisson process of --rate
requests/s (0: as soon as a slot frees). Measured as vLLM's serving benchmark does: TTFT (request sent -> first
text), ITL (gaps between streamed chunks; a chunk is one token unless a stop-string check held text back),
end-to-end latency (p50/p90/p99), request throughput and output-token throughput (usage.completion_tokens / wall
time).

--reference-gguf FILE adds a row set for llama-cpp-python's OpenAI server (`python -m llama_cpp.server`, from
--reference-python's environment) on that GGUF, the same model in its own quantization, as the reference:
it answers one request at a time (others wait; its default of cutting a stream short when another request
waits is turned off) and reuses the KV cache of the previous prompt's common prefix. When its stream has no
usage chunk, its tokens are its streamed text chunks.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package itself uses

CONFIGS = {"sequential": ["--max-seqs", "1", "--no-prefix-caching"], "batched": ["--no-prefix-caching"],
           "batched+prefix": []}
REFERENCE = "llama-cpp-python"
SHARED = '''You are a careful Python programmer. The project below parses configuration files and validates them.

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Section:
    """One [section] of a configuration file: its name and its key/value pairs, in file order."""
    name: str
    values: dict[str, str] = field(default_factory=dict)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

'''


@dataclass
class Result:
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    e2e: float = 0.0
    tokens: int = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(args, name: str, port: int) -> list[str]:
    if name == REFERENCE:
        return [args.reference_python, "-m", "llama_cpp.server", "--model", args.reference_gguf, "--port", str(port),
                "--n_ctx", "2048", "--n_threads", str(os.cpu_count()),
                "--interrupt_requests", "false"]  # its default ends a stream as soon as another request waits
    return [sys.executable, "-m", "codelm", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
            "--dtype", args.dtype, "--max-queue", "1024", *(["--quantize", args.quantize] if args.quantize else []),
            *CONFIGS[name]]


def start_server(args, name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = server_command(args, name, port)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {' '.join(cmd)}")
        try:
            httpx.get(f"{url}/v1/models").raise_for_status()
            return proc, url
        except (httpx.TransportError, httpx.HTTPStatusError):
            time.sleep(0.3)


def shared_prefix(tokens: int) -> str:
    """About `tokens` tokens of code (the model's tokenizer decides exactly): SHARED repeated."""
    return (SHARED * (tokens // 150 + 1))[:tokens * 4]


async def one_request(client, url: str, prompt: str, max_tokens: int) -> Result:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    result, start = Result(), time.perf_counter()
    last, chunks = None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            now = time.perf_counter()
            if chunk.get("usage"):
                result.tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                chunks += 1
                if last is None:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
    result.e2e = time.perf_counter() - start
    result.tokens = result.tokens or chunks  # a server without a usage chunk: one streamed chunk per token
    return result


async def load(url: str, prompts: list[str], concurrency: int, rate: float, max_tokens: int, seed: int = 0):
    """Every prompt once, at most `concurrency` in flight, arrivals Poisson at `rate` per second (0: at once)."""
    rng, slots = random.Random(seed), asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        async def limited(prompt):
            async with slots:
                return await one_request(client, url, prompt, max_tokens)

        tasks, start = [], time.perf_counter()
        for prompt in prompts:
            tasks.append(asyncio.create_task(limited(prompt)))
            if rate > 0:
                await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start


def percentiles(values: list[float]) -> str:
    if len(values) < 2:
        return " / ".join([f"{1000 * values[0]:.0f}" if values else "-"] * 3)
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"{1000 * q[49]:.0f} / {1000 * q[89]:.0f} / {1000 * q[98]:.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests", type=int, default=0, help="requests per concurrency level (0: 2 x concurrency, >= 8)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--prefix-tokens", type=int, default=500)
    p.add_argument("--rate", type=float, default=0.0, help="Poisson arrival rate, requests/s (0: closed loop)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--quantize", choices=["int8"], help="codelm serve --quantize (the reference GGUF is Q4_1)")
    p.add_argument("--reference-gguf", help="also run llama-cpp-python's server on this GGUF")
    p.add_argument("--reference-python", default=sys.executable,
                   help="the Python whose environment has llama-cpp-python[server]")
    args = p.parse_args()
    names = args.configs.split(",") + ([REFERENCE] if args.reference_gguf else [])
    prefix = shared_prefix(args.prefix_tokens)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    precision = f"{args.dtype}{' int8' if args.quantize else ''}"
    print(f"{cpu}, {os.cpu_count()} cores; {args.checkpoint}, {precision}, ~{args.prefix_tokens}-token shared "
          f"prefix, {args.max_tokens} new tokens, "
          f"arrivals {f'Poisson {args.rate:.1f}/s' if args.rate else 'closed loop'}")
    print(
        "| config | concurrency | requests | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | e2e p50/p90/p99 ms "
        "| req/s | output tok/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        proc, url = start_server(args, name)
        try:
            asyncio.run(load(url, [prefix + "# warm-up\n"], 1, 0, 4))  # first-call costs out of the figures
            for concurrency in map(int, args.concurrency.split(",")):
                count = args.requests or max(8, 2 * concurrency)
                prompts = [
                    f"{prefix}# request {random.Random(i).getrandbits(32)}: a helper\ndef " for i in range(count)
                ]
                results, wall = asyncio.run(load(url, prompts, concurrency, args.rate, args.max_tokens))
                tokens = sum(r.tokens for r in results)
                print(
                    f"| {name} | {concurrency} | {count} | {percentiles([r.ttft for r in results])} | "
                    f"{percentiles([g for r in results for g in r.itl])} | {percentiles([r.e2e for r in results])} "
                    f"| {count / wall:.2f} | {tokens / wall:.1f} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
