"""The HTTP API: OpenAI's /v1/completions and /v1/chat/completions, llama.cpp's /infill, health, metrics.

Why these shapes: editors, chat clients and evaluation harnesses already speak
them, so the official `openai` client (and llama.cpp's editor plugins for
/infill) work unchanged. Requests are validated here (unknown fields ignored,
as OpenAI does; a wrong type or value is a 400 naming the field), turned into
scheduler requests, and answered whole or as server-sent events while the
scheduler thread produces tokens. No input gives a 500: a 500 means a bug, and
it fails only the request that met it.
"""

import asyncio
import json
import random
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Literal

import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from codelm.chat import TOOL_OPEN, encode_chat, parse_calls, tools_grammar, with_tools
from codelm.config import SamplingParams
from codelm.data.fim import fim_prompt
from codelm.errors import UserError
from codelm.inference.constraints import Grammar
from codelm.inference.engine import Engine, log
from codelm.inference.stops import partial_tail
from codelm.serve.blocks import BlockPool
from codelm.serve.config import ServeConfig
from codelm.serve.metrics import Metrics
from codelm.serve.scheduler import Event, QueueFull, Scheduler, TokenLogprob
from codelm.serve.scheduler import Request as Job
from codelm.serve.structured import NamedToolChoice, ResponseFormat, Strict, Tool, constraint_of
from codelm.synth.teacher import reply_end
from codelm.tokenizer import FILE_SEP

DISCONNECT_POLL_S = 0.5  # how often a non-streaming request checks that its client is still there
ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/infill"}
OPEN_ROUTES = ("/", "/health")  # no API key needed: the playground page itself and liveness probes
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's caps
MAX_TOP_LOGPROBS = 20
GRAMMAR_CACHE = 64  # compiled grammars kept, oldest dropped first


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None):
    """OpenAI's error body, which its client turns into BadRequestError, RateLimitError, ..."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}},
                        status_code=status, headers=headers)


# ---- request bodies: a field this server does not implement is a 400 naming it, never ignored ----

class StreamOptions(Strict):
    include_usage: bool = False


class SamplingBody(Strict):
    model: str | None = None
    user: str | None = None  # an end-user id for the client's own records: no effect on the output
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0)  # 0: greedy
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1)  # -1 or 0: off (vLLM's spelling)
    min_p: float = Field(0.0, ge=0.0, lt=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    guided_json: dict | str | None = None  # vLLM's extras: one constraint per request
    guided_regex: str | None = None
    guided_grammar: str | None = None  # Lark, in llguidance's dialect
    guided_choice: list[str] | None = None
    constrain: Literal["python"] | None = None  # codelm's extra: the code parses (codelm.inference.syntax)

    def constraint(self, code: str):
        """The request's constraint as (kind, spec); `code` says where a Python-syntax one finds the code:
        "prompt" (the completion continues it) or "reply" (the reply is the program)."""
        if self.constrain is not None and getattr(self, "logprobs", None) not in (None, False):
            raise ApiError(400, "constrain python takes tokens back, so it cannot report logprobs: drop one",
                           "constrain")
        try:
            return constraint_of(self.response_format, self.guided_json, self.guided_regex, self.guided_grammar,
                                 self.guided_choice, code if self.constrain else None)
        except ValueError as e:
            raise ApiError(400, str(e), "response_format") from None


class CompletionBody(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None  # fill in the middle between prompt and suffix
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False


class TextPart(Strict):
    type: Literal["text"] = "text"
    text: str = ""


class CallFunction(BaseModel):
    name: str
    arguments: str = "{}"


class ToolCall(BaseModel):
    id: str = ""
    type: Literal["function"] = "function"
    function: CallFunction


class Message(BaseModel):
    """A chat message; fields the client echoes back from a reply (refusal, audio, ...) must be empty."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def no_unknown_content(self):
        unknown = [k for k, v in (self.model_extra or {}).items() if v not in (None, [], {}, "")]
        if unknown:
            raise ValueError(f"message field {unknown[0]!r} is not supported by this server")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    def plain(self) -> dict:
        """As codelm.chat.with_tools reads messages."""
        calls = [c.model_dump() for c in self.tool_calls or []]
        return {"role": self.role, "content": self.text(), "tool_calls": calls}


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def tool_mode(self) -> tuple[list[Tool], str] | None:
        """(the tools a call may use, "none" | "auto" | "required"), or None without tools."""
        if not self.tools:
            if self.tool_choice not in (None, "none"):
                raise ApiError(400, "tool_choice: give tools to choose from", "tool_choice")
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            named = [t for t in self.tools if t.function.name == self.tool_choice.function.name]
            if not named:
                raise ApiError(400, f"tool_choice: no tool named {self.tool_choice.function.name!r} among "
                               f"{', '.join(t.function.name for t in self.tools)}", "tool_choice")
            return named, "required"
        return self.tools, self.tool_choice or "auto"


class ExtraFile(Strict):
    filename: str = ""
    text: str = ""


class InfillBody(Strict):
    """llama.cpp's /infill, with its sampling defaults."""

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraFile] = []
    prompt: str = ""  # appended to input_prefix
    n_predict: int = Field(-1, ge=-1)  # -1: to the end of the context
    temperature: float = Field(0.8, ge=0.0)
    top_k: int = Field(40, ge=-1)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    min_p: float = Field(0.05, ge=0.0, lt=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    seed: int = Field(-1, ge=-1)  # -1: random
    stop: list[str] = []
    stream: bool = False


# ---- the server's state and the bridge from the scheduler thread ----

class Server:
    """The engine, its scheduler and what every route needs to know about the model."""

    def __init__(self, engine: Engine, cfg: ServeConfig):
        self.engine, self.cfg, self.tok = engine, cfg, engine.tok
        self.context = engine.model.config.max_seq_len
        self.name = cfg.model_name or Path(cfg.checkpoint).name or "codelm"
        self.metrics = Metrics()
        blocks = -(-(cfg.cache_tokens or cfg.max_seqs * self.context) // cfg.block_size)
        self.pool = BlockPool(engine.model.config, blocks, cfg.block_size, engine.dtype, engine.device,
                              cfg.prefix_caching)
        self.scheduler = Scheduler(engine, self.pool, self.metrics, cfg.max_seqs, cfg.max_queue, cfg.step_tokens)
        # a chat reply ends at the template's end of the assistant turn (ChatML: <|im_end|>)
        self.reply_end = reply_end(self.tok.chat_template)
        self.token_text: dict[int, str] = {}
        self.grammars: dict[str, Grammar] = {}

    def grammar(self, kind: str, spec) -> Grammar:
        """A request's constraint, compiled once per distinct spec (checking it costs milliseconds; a bad one is
        a UserError, answered 400)."""
        key = json.dumps([kind, spec], sort_keys=True)
        if key not in self.grammars:
            if len(self.grammars) >= GRAMMAR_CACHE:
                self.grammars.pop(next(iter(self.grammars)))
            self.grammars[key] = self.engine.constraint(kind, spec)
        return self.grammars[key]

    def piece(self, token: int) -> str:
        """The text of one token, as logprobs name it."""
        if token not in self.token_text:
            self.token_text[token] = self.tok.decode([token])
        return self.token_text[token]

    def render_metrics(self) -> str:
        s = self.scheduler
        return self.metrics.render(len(s.waiting), len(s.running), s.max_seqs, self.pool.hit_tokens,
                                   self.pool.queried_tokens)


@dataclass
class Choice:
    """One completion being assembled from events."""

    text: str = ""
    tokens: list[TokenLogprob] = field(default_factory=list)
    generated: int = 0
    finish_reason: str | None = None
    error: str | None = None


class Flight:
    """The scheduler jobs of one HTTP request and the queue their events come back on."""

    def __init__(self, server: Server, jobs: list[Job]):
        self.jobs, self.queue = jobs, asyncio.Queue()
        loop = asyncio.get_running_loop()
        for i, job in enumerate(jobs):
            job.emit = lambda event, i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, event))
        submitted = []
        try:
            for job in jobs:
                server.scheduler.submit(job)
                submitted.append(job)
        except (QueueFull, UserError):
            for job in submitted:
                job.cancelled = True
            raise

    async def events(self, http: Request | None = None):
        """(job index, Event) until every sample has finished; with `http`, stop if its client goes away."""
        remaining = sum(job.n for job in self.jobs)
        try:
            while remaining:
                try:
                    i, event = await asyncio.wait_for(self.queue.get(), DISCONNECT_POLL_S if http else None)
                except TimeoutError:
                    if await http.is_disconnected():
                        return
                    continue
                remaining -= event.finish_reason is not None
                yield i, event
        finally:  # finished, disconnected or cancelled: whatever still runs frees its slot
            for job in self.jobs:
                job.cancelled = True


def sse(chunks) -> StreamingResponse:
    async def body():
        async for chunk in chunks:
            yield f"data: {chunk if isinstance(chunk, str) else json.dumps(chunk)}\n\n"
    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# ---- from request bodies to scheduler jobs ----

def sampling(body: SamplingBody, cfg: ServeConfig, stop: list[str], max_new_tokens: int) -> SamplingParams:
    """The engine's settings for an OpenAI-style body; temperature 0 is greedy."""
    if len(stop) > cfg.max_stops:
        raise ApiError(400, f"stop: at most {cfg.max_stops} stop strings, got {len(stop)}", "stop")
    if body.n > cfg.max_n:
        raise ApiError(400, f"n: at most {cfg.max_n} completions per request, got {body.n}", "n")
    settings = {"stop": stop, "max_new_tokens": max_new_tokens, "repetition_penalty": body.repetition_penalty,
                "seed": body.seed if body.seed is not None else random.getrandbits(62)}
    if body.temperature == 0:
        return SamplingParams(strategy="greedy", **settings)
    return SamplingParams(strategy="sample", temperature=body.temperature, top_k=max(body.top_k, 0),
                          top_p=body.top_p, min_p=body.min_p, **settings)


def stops_of(stop: str | list[str] | None) -> list[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def jobs_for(server: Server, prompts: list[list[int]], body: SamplingBody, max_tokens: int | None,
             logprobs: int | None = None, prompt_logprobs: bool = False, extra_stops=(),
             grammar: Grammar | None = None) -> list[Job]:
    """One scheduler job per prompt, max_tokens fitted to the context (400 with the numbers if none is left)."""
    if len(prompts) * body.n > server.cfg.max_queue:
        raise ApiError(400, f"prompt: {len(prompts)} prompts x n={body.n} is more than the server queues "
                       f"({server.cfg.max_queue})", "prompt")
    jobs = []
    for ids in prompts:
        limit, _ = server.engine.budget(ids, max_tokens or server.context)
        params = sampling(body, server.cfg, stops_of(body.stop), limit)
        jobs.append(Job(ids, params, limit, emit=None, n=body.n, logprobs=logprobs,
                        prompt_logprobs=prompt_logprobs, extra_stops=list(extra_stops), grammar=grammar))
    return jobs


def completion_prompts(server: Server, body: CompletionBody) -> list[tuple[list[int], str]]:
    """(token ids, text to echo) of each prompt; with `suffix`, fill-in-the-middle prompts."""
    prompt = body.prompt
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: give at least one prompt", "prompt")
    out = []
    for p in prompt:
        if isinstance(p, str):
            ids = fim_prompt(p, body.suffix, server.tok) if body.suffix is not None else server.engine.encode(p)
            out.append((ids, p))
            continue
        if body.suffix is not None:
            raise ApiError(400, "suffix: fill in the middle needs a text prompt, not token ids", "suffix")
        bad = [t for t in p if not 0 <= t < server.tok.vocab_size]
        if bad:
            raise ApiError(400, f"prompt: token id {bad[0]} is outside the vocabulary (0..{server.tok.vocab_size - 1})",
                           "prompt")
        out.append((list(p), server.tok.decode(p)))
    return out


def infill_ids(server: Server, body: InfillBody) -> list[int]:
    """llama.cpp's infill prompt as codelm trained it: the extra files as `<file_sep>name\\ntext` inside the
    FIM prefix (the repository layout of codelm.data.repo_order), then the current file's prefix."""
    ids = fim_prompt(body.input_prefix + body.prompt, body.input_suffix, server.tok)
    if not body.input_extra:
        return ids
    [sep] = server.tok.require(FILE_SEP)
    extra = [i for f in body.input_extra for i in [sep, *server.tok.encode(f"{f.filename}\n{f.text}")]]
    at = len(server.tok.prefix_ids) + 1  # after <fim_prefix>
    return [*ids[:at], *extra, sep, *ids[at:]]


# ---- response pieces ----

def usage(prompts: list[list[int]], choices: list[Choice]) -> dict:
    prompt_tokens, completion_tokens = sum(map(len, prompts)), sum(c.generated for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(server: Server, tokens: list[TokenLogprob], offset: int) -> dict:
    """The legacy completions shape: parallel lists, text offsets counted from `offset`."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(server.piece(t.token))
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({server.piece(i): lp for i, lp in t.top} if t.logprob is not None else None)
        out["text_offset"].append(offset)
        offset += len(out["tokens"][-1])
    return out


def chat_logprobs(server: Server, tokens: list[TokenLogprob]) -> dict:
    def entry(token: int, logprob: float) -> dict:
        text = server.piece(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]}
                        for t in tokens]}


def absorb(choice: Choice, event: Event):
    choice.text += event.text
    choice.generated = event.generated if event.error is None else choice.generated
    choice.finish_reason = event.finish_reason or choice.finish_reason
    choice.error = event.error or choice.error
    if event.prompt_logprobs:
        choice.tokens += event.prompt_logprobs
    if event.token:
        choice.tokens.append(event.token)


async def collect(flight: Flight, http: Request, n: int) -> list[Choice]:
    """A whole (non-streamed) answer: choice i * n + j is sample j of prompt i; a 500 if one met an internal error."""
    choices = [Choice() for _ in range(len(flight.jobs) * n)]
    async for i, event in flight.events(http):
        absorb(choices[i * n + event.sample], event)
    failed = next((c.error for c in choices if c.error), None)
    if failed:
        raise ApiError(500, f"generation failed: {failed}")
    return choices


def header(kind: str, server: Server) -> dict:
    return {"id": f"{'chatcmpl' if kind.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex}", "object": kind,
            "created": int(time.time()), "model": server.name}


# ---- routes ----

router = APIRouter()


def server_of(http: Request) -> Server:
    return http.app.state.server


@router.get("/health")
async def health():
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(http: Request):
    return PlainTextResponse(server_of(http).render_metrics(), media_type="text/plain; version=0.0.4")


@router.get("/v1/models")
async def models(http: Request):
    server = server_of(http)
    return {"object": "list", "data": [{"id": server.name, "object": "model", "created": int(time.time()),
                                        "owned_by": "codelm", "max_model_len": server.context}]}


@router.get("/", response_class=HTMLResponse)
async def playground():
    return HTMLResponse(files("codelm.serve").joinpath("playground.html").read_text())


@router.post("/v1/completions")
async def completions(body: CompletionBody, http: Request):
    server = server_of(http)
    prompts = completion_prompts(server, body)
    ids = [p for p, _ in prompts]
    echo_logprobs = body.echo and body.logprobs is not None
    constraint = body.constraint("prompt")
    if constraint and constraint[0] == "python" and body.suffix is not None:
        raise ApiError(400, "constrain python continues the prompt's code; with a suffix the middle is not a "
                       "program prefix", "constrain")
    grammar = server.grammar(*constraint) if constraint else None
    flight = Flight(server, jobs_for(server, ids, body, body.max_tokens or 16, body.logprobs, echo_logprobs,
                                     grammar=grammar))
    n, head = body.n, header("text_completion", server)
    # the document start that encode() puts before a text prompt is no part of what the user sent
    skip = len(server.tok.prefix_ids) if isinstance(body.prompt, str) or isinstance(body.prompt[0], str) else 0

    def choice_json(index: int, text: str, tokens: list[TokenLogprob], offset: int, finish: str | None) -> dict:
        logprobs = completion_logprobs(server, tokens, offset) if body.logprobs is not None else None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    if body.stream:
        async def chunks():
            choices = [Choice() for _ in range(len(ids) * n)]
            if body.echo:
                empty = [choice_json(i, prompts[i // n][1], [], 0, None) for i in range(len(choices))]
                yield {**head, "choices": empty}
            async for i, event in flight.events():
                index, choice = i * n + event.sample, choices[i * n + event.sample]
                absorb(choice, event)
                if event.error:
                    yield {"error": {"message": event.error, "type": "server_error"}}
                    return
                tokens = [*(event.prompt_logprobs or [])[skip:], *([event.token] if event.token else [])]
                if event.text or tokens or event.finish_reason:
                    yield {**head, "choices": [choice_json(index, event.text, tokens, 0, event.finish_reason)]}
            if body.stream_options and body.stream_options.include_usage:
                yield {**head, "choices": [], "usage": usage(ids, choices)}
            yield "[DONE]"

        return sse(chunks())

    choices = await collect(flight, http, n)
    out = []
    for index, c in enumerate(choices):
        prompt_text = prompts[index // n][1] if body.echo else ""
        tokens = c.tokens[skip:] if echo_logprobs else c.tokens
        out.append(choice_json(index, prompt_text + c.text, tokens, 0, c.finish_reason))
    return {**head, "choices": out, "usage": usage(ids, choices)}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatBody, http: Request):
    server = server_of(http)
    tools = body.tool_mode()
    constraint = body.constraint("reply")
    if tools and constraint:
        raise ApiError(400, "tools: give either tools or a response format / guided constraint, not both", "tools")
    offered = [t.model_dump(exclude_none=True) for t in tools[0]] if tools else []
    messages = with_tools([m.plain() for m in body.messages], offered)
    ids = encode_chat(server.tok, messages, server.tok.chat_template)
    if tools:
        functions = [t["function"] for t in offered]
        grammar = server.grammar("lark", tools_grammar(functions, tools[1], body.parallel_tool_calls))
    else:
        grammar = server.grammar(*constraint) if constraint else None
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    stops = [server.reply_end] if server.reply_end else []
    limit = body.max_completion_tokens or body.max_tokens
    flight = Flight(server, jobs_for(server, [ids], body, limit, logprobs, extra_stops=stops, grammar=grammar))
    head = header("chat.completion", server)
    calls = tools is not None and tools[1] != "none"  # replies may hold calls, returned as tool_calls
    if body.stream:
        return sse(chat_chunks(server, body, flight, {**head, "object": "chat.completion.chunk"}, ids, calls))
    choices = await collect(flight, http, body.n)
    return {**head, "choices": [{"index": i, **reply(c.text, c.finish_reason, calls),
                                 "logprobs": chat_logprobs(server, c.tokens) if logprobs is not None else None}
                                for i, c in enumerate(choices)],
            "usage": usage([ids], choices)}


def reply(text: str, finish: str | None, calls: bool) -> dict:
    """A chat choice's message and finish reason; the calls a reply made become tool_calls."""
    content, made = parse_calls(text) if calls else (text, [])
    if made:
        return {"message": {"role": "assistant", "content": content or None, "tool_calls": made},
                "finish_reason": "tool_calls"}
    return {"message": {"role": "assistant", "content": text}, "finish_reason": finish}


async def chat_chunks(server: Server, body: ChatBody, flight: Flight, head: dict, ids: list[int], calls: bool):
    """Streamed chat: content deltas as they come, except text that may open a tool call, which is held back;
    the calls go out as tool_calls deltas (one per call, with its whole arguments) when the reply ends."""
    choices = [Choice() for _ in range(body.n)]
    shown = [0] * body.n
    yield {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None} for i in range(body.n)]}
    async for _, event in flight.events():
        j, choice = event.sample, choices[event.sample]
        absorb(choice, event)
        if event.error:
            yield {"error": {"message": event.error, "type": "server_error"}}
            return
        safe = len(choice.text) if not calls else held_back(choice.text)
        delta = {"content": choice.text[shown[j]:safe]} if safe > shown[j] else {}
        shown[j] = max(shown[j], safe)
        finish = event.finish_reason
        if finish and calls:
            made = reply(choice.text, finish, calls)
            if "tool_calls" in made["message"]:
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(made["message"]["tool_calls"])]
            elif shown[j] < len(choice.text):
                delta["content"] = delta.get("content", "") + choice.text[shown[j]:]
            finish = made["finish_reason"]
        if delta or finish or event.token:
            lp = chat_logprobs(server, [event.token]) if event.token else None
            yield {**head, "choices": [{"index": j, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
    if body.stream_options and body.stream_options.include_usage:
        yield {**head, "choices": [], "usage": usage([ids], choices)}
    yield "[DONE]"


def held_back(text: str) -> int:
    """How much of a reply is surely content: up to an opened call, or to an end that may begin one."""
    opened = text.find(TOOL_OPEN)
    if opened >= 0:
        return len(text[:opened].rstrip())
    return len(text) - partial_tail(text, TOOL_OPEN)


@router.post("/infill")
async def infill(body: InfillBody, http: Request):
    server = server_of(http)
    ids = infill_ids(server, body)
    openai_style = SamplingBody(
        temperature=body.temperature,
        top_k=body.top_k,
        top_p=body.top_p,
        min_p=body.min_p,
        repetition_penalty=body.repeat_penalty,
        stop=body.stop,
        seed=None if body.seed == -1 else body.seed,
    )
    [job] = jobs_for(server, [ids], openai_style, None if body.n_predict == -1 else max(body.n_predict, 1))
    flight = Flight(server, [job])

    def final(choice: Choice) -> dict:
        return {
            "content": "",
            "stop": True,
            "model": server.name,
            "tokens_predicted": choice.generated,
            "tokens_evaluated": len(ids),
            "stopped_limit": choice.finish_reason == "length",
        }

    if body.stream:

        async def chunks():
            choice = Choice()
            async for _, event in flight.events():
                absorb(choice, event)
                if event.error:
                    yield {"error": {"message": event.error, "type": "server_error"}}
                    return
                if event.text:
                    yield {"content": event.text, "stop": False}
            yield final(choice)

        return sse(chunks())

    [choice] = await collect(flight, http, 1)
    return {**final(choice), "content": choice.text}


# ---- the app ----


def create_app(engine: Engine, cfg: ServeConfig) -> FastAPI:
    """The app with its scheduler thread running (stopped when the app shuts down)."""
    server = Server(engine, cfg)

    @asynccontextmanager
    async def lifespan(app):
        server.scheduler.start()
        yield
        server.scheduler.stop()

    app = FastAPI(title="codelm", lifespan=lifespan)
    app.state.server = server
    app.include_router(router)

    @app.middleware("http")
    async def auth_and_count(http: Request, call_next):
        route = http.url.path if http.url.path in ROUTES else "other"
        if cfg.api_key and http.url.path not in OPEN_ROUTES:
            given = http.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                server.metrics.count_request(route, 401)
                return error_response(401, "missing or wrong API key: send `Authorization: Bearer KEY`")
        response = await call_next(http)
        server.metrics.count_request(route, response.status_code)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"] if part != "body"]
        if first["type"] == "json_invalid":
            return error_response(400, f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}")
        name = ".".join(loc) or "body"
        if first["type"] == "extra_forbidden":
            return error_response(400, f"{name}: not supported by this server (refused rather than ignored)",
                                  loc[0] if loc else None)
        return error_response(400, f"{name}: {first['msg']}", loc[0] if loc else None)

    @app.exception_handler(ApiError)
    async def api_error(_, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.headers)

    @app.exception_handler(UserError)
    async def user_error(_, exc: UserError):
        return error_response(400, str(exc))

    @app.exception_handler(QueueFull)
    async def queue_full(_, exc: QueueFull):
        return error_response(429, f"server busy: {exc}", headers={"Retry-After": "1"})

    return app


def serve(cfg: ServeConfig):
    """Load the checkpoint and serve it until interrupted."""
    if cfg.exposed_without_key():
        log(f"warning: serving on {cfg.host} without --api-key: anyone who can reach this port can use the model")
    engine = Engine.from_checkpoint(cfg.checkpoint, **cfg.engine.options())
    app = create_app(engine, cfg)
    log(f"codelm serve: {cfg.checkpoint} on http://{cfg.host}:{cfg.port} (playground at /, API at /v1)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
