"""The teacher of `codelm synth oss-instruct` and `magpie`: a local checkpoint (through the engine) or any
OpenAI-compatible endpoint, behind one call, so a user with a big model served elsewhere can use it.

`generate(prompts, sampling)` gives one reply per prompt, or None where the teacher did not finish it
(max_new_tokens, or a prompt that leaves its context no room): a cut reply is no training data. A prompt is a
chat (a list of {"role", "content"}; the teacher's chat template renders it and the reply is the assistant's
turn: /v1/chat/completions) or raw text, continued as it is (Magpie's pre-query prefix, special-token strings
written as the template writes them: /v1/completions).

Sampling is seeded alike on both: the k-th copy of a prompt in one call is sample k, drawn from a seed fixed
by (sampling.seed, prompt, k) - the engine's own per-sample seed, or the request's `seed` (which OpenAI and
vLLM honour). A greedy teacher answers the copies of a prompt once.

An endpoint that is down, refuses a request or answers something other than the API's JSON is a one-line
UserError; busy answers (429, 5xx) and timeouts are retried twice first. A stage's calls go through a
`Journal`, so replies already paid for survive an interruption.
"""

import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

from codelm.chat import encode_chat, render
from codelm.config import SamplingParams
from codelm.errors import UserError
from codelm.inference.engine import Engine
from codelm.synth.config import TeacherConfig
from codelm.tokenizer import Tokenizer

Prompt = list[dict] | str
PLACEHOLDER = "\x00codelm-placeholder\x00"
RETRIES = 2  # for 429, 5xx and timeouts, after 1 s then 2 s
RETRY_STATUSES = {429, 500, 502, 503, 504}


def sampling(temperature: float, top_p: float, max_new_tokens: int, seed: int,
             stop: tuple[str, ...] = ()) -> SamplingParams:
    """The teacher's sampling in the stages' spelling: temperature 0 is greedy."""
    settings = {"max_new_tokens": max_new_tokens, "seed": seed, "stop": list(stop)}
    return SamplingParams.from_temperature(temperature, **({"top_p": top_p} if temperature else {}), **settings)


def turn_around(template: str | None, messages: list[dict]) -> tuple[str, str]:
    """The rendered text before the last message's content, and the end of that turn: the template's text right
    after the content, up to its first line break ("<|im_end|>" for ChatML, "[/INST]" for Mistral's)."""
    *head, last = messages
    text = render([*head, {**last, "content": PLACEHOLDER}], template, add_generation_prompt=False)
    before, found, after = text.partition(PLACEHOLDER)
    if not found:
        raise UserError(f"the chat template does not render a message of role {last['role']!r}")
    return before, after.strip().split("\n", 1)[0].strip()


def reply_end(template: str | None) -> str:
    """Where an assistant's reply ends in this template ("<|im_end|>" for ChatML): a chat reply stops there,
    before the engine's end-of-text."""
    return turn_around(template, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}])[1]


def pre_query(template: str | None, system: str = "") -> tuple[str, str]:
    """Magpie's pre-query prefix - the conversation rendered up to where the user's words begin (after the
    optional system message, or the one the template adds itself) - and the end of the user's turn, where an
    invented request stops."""
    messages = [{"role": "system", "content": system}] if system else []
    prefix, end = turn_around(template, [*messages, {"role": "user", "content": ""}])
    if not end:
        raise UserError("the chat template marks no end of the user's turn: Magpie could not tell where an "
                        "invented request ends")
    return prefix, end


def load_template(path: str) -> str:
    """A chat template from a Jinja file, or from a tokenizer_config.json (or the directory holding one)."""
    p = Path(path)
    p = p / "tokenizer_config.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"chat template not found: {path}")
    if p.suffix != ".json":
        return p.read_text()
    try:
        template = json.loads(p.read_text()).get("chat_template")
    except (ValueError, AttributeError):
        template = None
    if not isinstance(template, str):
        raise UserError(f"{p} holds no chat_template string")
    return template


class Teacher(ABC):
    """generate() over sample(): copies of a prompt become its samples 0..k-1 (see the module docstring)."""

    id: str  # in every row's provenance
    template: str | None  # the chat template the teacher's model was trained with (None: ChatML)

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[str | None]:
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(json.dumps(prompt), []).append(i)
        firsts = [prompts[indices[0]] for indices in groups.values()]
        counts = [1 if params.strategy == "greedy" else len(indices) for indices in groups.values()]
        replies: list[str | None] = [None] * len(prompts)
        for samples, indices in zip(self.sample(firsts, counts, params), groups.values()):
            for k, i in enumerate(indices):
                replies[i] = samples[k % len(samples)]
        return replies

    @abstractmethod
    def sample(self, prompts: list[Prompt], counts: list[int], params: SamplingParams) -> list[list[str | None]]:
        """counts[i] replies to each (distinct) prompt, sample k of prompt i seeded by (params.seed, prompt, k)."""


class LocalTeacher(Teacher):
    """A checkpoint through the engine, prompts in batches of cfg.batch_size rows."""

    def __init__(self, cfg: TeacherConfig):
        self.engine = Engine.from_checkpoint(cfg.checkpoint, **cfg.engine.options())
        self.template = load_template(cfg.template) if cfg.template else self.engine.tok.chat_template
        self.id = f"checkpoint:{cfg.checkpoint}"
        self.batch_size = cfg.batch_size
        # the engine stops at end-of-text; a chat reply ends earlier, at the template's end of the assistant turn
        self.reply_end = reply_end(self.template)

    def sample(self, prompts, counts, params):
        tok, context = self.engine.tok, self.engine.model.config.max_seq_len
        ids = [encode_chat(tok, p, self.template) if isinstance(p, list) else encode_text(tok, p) for p in prompts]
        replies = [[None] * count for count in counts]
        for chat in (True, False):
            chosen = [i for i, p in enumerate(prompts) if isinstance(p, list) == chat and 0 < len(ids[i]) < context]
            stop = [*params.stop, self.reply_end] if chat and self.reply_end else params.stop
            n = max((counts[i] for i in chosen), default=1)
            step = max(1, self.batch_size // n)
            for start in range(0, len(chosen), step):
                part = chosen[start:start + step]
                for i, completions in zip(part, self.engine.generate([ids[i] for i in part],
                                                                     replace(params, n=n, stop=stop))):
                    replies[i] = [c.text if c.finish_reason == "stop" else None for c in completions[:counts[i]]]
        return replies


def encode_text(tok: Tokenizer, text: str) -> list[int]:
    """Raw prompt text with the tokenizer's special-token strings as their ids, as codelm.chat encodes a
    template's own text (the pre-query prefix is such text)."""
    if not tok.special:
        return tok.encode(text)
    pattern = "(" + "|".join(map(re.escape, sorted(tok.special, key=len, reverse=True))) + ")"
    return [i for piece in re.split(pattern, text) if piece
            for i in ([tok.special[piece]] if piece in tok.special else tok.encode(piece))]


class HttpTeacher(Teacher):
    """An OpenAI-compatible endpoint (vLLM, llama.cpp's server, SGLang, OpenAI, ...) through urllib, with
    cfg.batch_size requests in flight."""

    def __init__(self, cfg: TeacherConfig):
        self.base, self.timeout, self.batch_size = cfg.url.rstrip("/"), cfg.timeout, cfg.batch_size
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.template = load_template(cfg.template) if cfg.template else None
        self.model = cfg.model or self.first_model()
        self.id = f"{self.model}@{self.base}"

    def first_model(self) -> str:
        answer = self.request("models", None)
        try:
            return str(answer["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise UserError(f"teacher URL {self.base} lists no model at /models: name one with "
                            "--teacher-model") from None

    def sample(self, prompts, counts, params):
        jobs = [(i, k) for i, count in enumerate(counts) for k in range(count)]
        pool = ThreadPoolExecutor(max_workers=self.batch_size)
        try:
            answers = list(pool.map(lambda job: self.ask(prompts[job[0]], params, job[1]), jobs))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # after an error, send nothing more
        replies = [[] for _ in counts]
        for (i, _), answer in zip(jobs, answers):
            replies[i].append(answer)
        return replies

    def ask(self, prompt: Prompt, params: SamplingParams, k: int) -> str | None:
        chat = isinstance(prompt, list)
        greedy = params.strategy == "greedy"
        seed = int.from_bytes(hashlib.blake2b(f"{params.seed}:{k}:{json.dumps(prompt)}".encode(),
                                              digest_size=4).digest(), "little") >> 1
        body = {"model": self.model, "max_tokens": params.max_new_tokens, "seed": seed,
                "temperature": 0.0 if greedy else params.temperature, "top_p": 1.0 if greedy else params.top_p,
                **({"messages": prompt} if chat else {"prompt": prompt})}
        if params.stop:
            body["stop"] = params.stop
        path = "chat/completions" if chat else "completions"
        answer = self.request(path, body)
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            text = None
        if not isinstance(text, str):
            field = "choices[0].message.content" if chat else "choices[0].text"
            raise UserError(f"teacher URL {self.base}/{path} answered without {field}: {excerpt(json.dumps(answer))}")
        return None if finish == "length" else text

    def request(self, path: str, body: dict | None) -> dict:
        """POST body (GET without one) to BASE/path, the answer's JSON; UserError if there is none."""
        url = f"{self.base}/{path}"
        data = None if body is None else json.dumps(body).encode()
        for attempt in range(RETRIES + 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=self.headers),
                                            timeout=self.timeout) as response:
                    raw = response.read()
                break
            except urllib.error.HTTPError as e:
                if e.code not in RETRY_STATUSES or attempt == RETRIES:
                    raise UserError(f"teacher URL {url} answered HTTP {e.code}: {excerpt(e.read())}") from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = e.reason if isinstance(e, urllib.error.URLError) else e
                if not isinstance(reason, TimeoutError) or attempt == RETRIES:
                    why = str(reason) or type(reason).__name__
                    raise UserError(f"teacher URL {self.base} is unreachable: {why}") from None
            time.sleep(2 ** attempt)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UserError(f"teacher URL {url} answered malformed JSON: {excerpt(raw)}")
        return answer


def excerpt(raw: bytes | str, chars: int = 200) -> str:
    """Some of a body, on one line."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())[:chars] or "(empty)"


class Journal:
    """The teacher's replies, appended to OUT.replies.jsonl call by call as they arrive: a stage that is
    interrupted (a crash, Ctrl-C, an endpoint that goes down) and run again with the same settings replays them
    instead of asking again, then goes on, and writes the same rows as a run that was never interrupted (the
    filters and tests after the teacher are cheap and deterministic, so they simply run again). Other settings
    start the journal over; it is removed once the stage has written OUT."""

    def __init__(self, out: str | Path, cfg):
        out = Path(out)
        self.path = out.with_name(f"{out.name.removesuffix('.jsonl')}.replies.jsonl")
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers")}
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
        self.replies: dict[str, list] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        if lines and json.loads(lines[0]).get("fingerprint") == self.fingerprint:
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the line being written when the run died
                    break
                self.replies[entry["call"]] = entry["replies"]
            print(f"resuming: {len(self.replies)} teacher calls replayed from {self.path}", flush=True)
        elif lines:
            print(f"note: {self.path} was written with other settings; asking the teacher again", flush=True)
        self.resumed = bool(self.replies)
        self.file = None  # opened at the first reply: a teacher that never answers leaves no file behind

    def _append(self, entry: dict):
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a" if self.resumed else "w", encoding="utf-8")
            if not self.resumed:
                self.file.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def generate(self, teacher: Teacher, call: str, prompts: list[Prompt], params: SamplingParams) -> list[str | None]:
        """teacher.generate(prompts, params), or its journaled replies for `call` (a name unique in the stage)."""
        if call not in self.replies:
            self.replies[call] = teacher.generate(prompts, params)
            self._append({"call": call, "replies": self.replies[call]})
        return self.replies[call]

    def close(self, done: bool):
        if self.file is not None:
            self.file.close()
        if done:
            self.path.unlink(missing_ok=True)


def make_teacher(cfg: TeacherConfig) -> Teacher:
    return LocalTeacher(cfg) if cfg.checkpoint else HttpTeacher(cfg)
