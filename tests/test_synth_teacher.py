"""`codelm synth oss-instruct` and `codelm synth magpie` against a fake OpenAI-compatible endpoint (canned replies
that must be kept and ones that must be dropped) and a tiny local checkpoint; Magpie's pre-query prefix for
ChatML and SmolLM2's template; a teacher URL that is down or answers junk is one line, exit status 2."""

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from codelm.checkpoint import save_model
from codelm.cli import build_parser, main
from codelm.cli.options import resolve
from codelm.config import EngineConfig, ModelConfig
from codelm.errors import UserError
from codelm.model.llama import Transformer
from codelm.sandbox.supervisor import run
from codelm.synth.config import MagpieConfig, OssInstructConfig, TeacherConfig
from codelm.synth.magpie import magpie
from codelm.synth.oss_instruct import GENERATOR, TEMPLATE, oss_instruct, parse_reply
from codelm.synth.teacher import HttpTeacher, pre_query, sampling
from codelm.tasks.humaneval import load_problems

HUMANEVAL = load_problems()[0]


def reply(problem: str, solution: str, tests: str | None = None, heading: str = "[{}]") -> str:
    text = f"{heading.format('Problem')}\n{problem}\n\n{heading.format('Solution')}\n```python\n{solution}```\n"
    return text + (f"\n{heading.format('Tests')}\n```python\n{tests}```\n" if tests is not None else "")


AREA = "def rectangle_area(width, height):\n    return width * height\n"
# the marker in each corpus file -> the teacher's reply to a snippet holding it (and its finish_reason)
OSS_REPLIES = {
    "good": reply("Write `rectangle_area(width, height)`: the area of a rectangle.", AREA,
                  "assert rectangle_area(2, 3) == 6\nassert rectangle_area(0, 5) == 0\n"),
    "failing": reply("Write `double(x)`, which returns twice x.", "def double(x):\n    return x * 3\n",
                     "assert double(2) == 4\n"),
    "garbled": "Sure! Here is a fun problem about rectangles, and its solution: just multiply.",
    "duplicate": reply("Compute the area of a rectangle of the given width and height.",
                       "def rectangle_area(width,height):  # the same code, spaced otherwise\n"
                       "    return (width * height)\n", "assert rectangle_area(1, 1) == 1\n"),
    "humaneval": reply("Are two numbers of the list closer than the threshold?",
                       HUMANEVAL["prompt"] + HUMANEVAL["canonical_solution"],
                       "assert has_close_elements([1.0, 1.1], 0.5)\n"),
    "untested": reply("Write `shout(text)`, which upper-cases text and adds an exclamation mark.",
                      "def shout(text):\n    return text.upper() + '!'\n", heading="## **[{}]**"),
    "unsafe": reply("Write `home()`, the user's home directory.",
                    "import os\n\n\ndef home():\n    return os.path.expanduser('~')\n", "assert home()\n"),
    "unfinished": reply("Write `f()`.", "def f():\n    return 1\n", "assert f() == 1\n"),
}
MAGPIE_FIBONACCI = "Write a Python function that returns the n-th Fibonacci number."
# (invented request, finish_reason) in the order the fake endpoint hands them out; then the answers
MAGPIE_REQUESTS = [
    (MAGPIE_FIBONACCI, "stop"),
    ("   ", "stop"),
    ("Hi there", "stop"),
    ("write a python function  that returns the N-th fibonacci number.", "stop"),
    ("Please complete this function:\n\n" + HUMANEVAL["prompt"], "stop"),
    ("Which numbers in a list lie closer together than a threshold?", "stop"),
    ("Fix this Python code for me: def f(x) return x", "stop"),
    ("Tell me a short poem about the sea.", "stop"),
    ("Write a Python class for a bank account with deposits and", "length"),
    ("Explain how Python's garbage collector finds reference cycles.", "stop"),
]
FIB = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
MAGPIE_ANSWERS = {
    MAGPIE_FIBONACCI: (f"Here it is:\n\n```python\n{FIB}```\n", "stop"),
    "Which numbers in a list lie closer together than a threshold?":
        (f"```python\n{HUMANEVAL['prompt']}{HUMANEVAL['canonical_solution']}```", "stop"),
    "Fix this Python code for me: def f(x) return x": ("```python\ndef f(x) return x\n```", "stop"),
    "Tell me a short poem about the sea.": ("Grey waves roll in,\nsalt on the wind.", "stop"),
    "Explain how Python's garbage collector finds reference cycles.": ("It walks the container objects", "length"),
}


@dataclass
class Endpoint:
    url: str
    requests: list = field(default_factory=list)  # (path, JSON body, headers) of each POST
    invented: list = field(default_factory=list)  # Magpie's requests still to hand out


class Handler(BaseHTTPRequestHandler):
    """/v1/models, /v1/chat/completions (OSS-Instruct replies by the snippet's marker, Magpie answers by the
    request) and /v1/completions (Magpie's requests, in order); /v1/broken/... answers junk."""

    endpoint: Endpoint

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer({"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.endpoint.requests.append((self.path, body, dict(self.headers)))
        if "/broken/" in self.path:
            return self.answer(None, raw=b"<html>502 Bad Gateway</html>")
        if self.path.endswith("/chat/completions"):
            asked = body["messages"][-1]["content"]
            marker = next((m for m in OSS_REPLIES if f"CASE {m}\n" in asked), None)
            text, finish = ((OSS_REPLIES[marker], "length" if marker == "unfinished" else "stop") if marker
                            else MAGPIE_ANSWERS.get(asked, ("I cannot help with that.", "stop")))
            return self.answer({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                             "finish_reason": finish}]})
        text, finish = self.endpoint.invented.pop(0) if self.endpoint.invented else ("", "stop")
        self.answer({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})

    def answer(self, obj, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def endpoint():
    state = Endpoint("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Bound", (Handler,), {"endpoint": state}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def corpus(tmp_path) -> Path:
    """One three-line file per canned reply, in the order the reader walks them (sorted)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i, marker in enumerate(OSS_REPLIES):
        (root / f"c{i}_{marker}.py").write_text(f"# CASE {marker}\ndef f{i}(x):\n    return x + {i}\n")
    return root


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def oss_config(corpus: Path, out: Path, url: str, **settings) -> OssInstructConfig:
    settings = {"n": len(OSS_REPLIES), "max_lines": 3, "workers": 1, "teacher": TeacherConfig(url=url)} | settings
    return OssInstructConfig(corpus=str(corpus), out=str(out), **settings)


def test_oss_instruct_keeps_what_passes_and_counts_what_it_drops(endpoint, corpus, tmp_path):
    out = tmp_path / "oss" / "rows.jsonl"
    stats = oss_instruct(oss_config(corpus, out, endpoint.url))
    assert stats.dropped == {"tests_failed": 1, "unparseable": 1, "exact_duplicate": 1, "contaminated": 1,
                             "unsafe_module": 1, "unfinished": 1}
    assert stats.requests == len(OSS_REPLIES) and stats.rows == 2 and stats.rows_with_tests == 1
    good, untested = rows_of(out)
    assert good["messages"] == [
        {"role": "user", "content": "Write `rectangle_area(width, height)`: the area of a rectangle."},
        {"role": "assistant", "content": f"```python\n{AREA}```"}]
    assert good["entry_point"] == "rectangle_area"
    assert good["tests"] == ["assert rectangle_area(2, 3) == 6", "assert rectangle_area(0, 5) == 0"]
    assert run(AREA, "\n".join(good["tests"])).status == "passed"
    assert untested["entry_point"] == "shout" and untested["tests"] == []  # markdown headings parse too
    assert good["provenance"] == {"repo": "corpus", "path": "c0_good.py", "line": 1, "end_line": 3, "license": "",
                                  "source": "corpus", "teacher": f"fake-teacher@{endpoint.url}",
                                  "template": TEMPLATE, "seed": 0, "draw": 0, "generator": GENERATOR}
    # the teacher saw the snippet, whole, in one user message; Magicoder's greedy decoding by default
    assert {path for path, _, _ in endpoint.requests} == {"/v1/chat/completions"}
    assert all(body["model"] == "fake-teacher" and body["temperature"] == 0.0 for _, body, _ in endpoint.requests)
    snippet = "```python\n# CASE good\ndef f0(x):\n    return x + 0\n```"
    assert sum(snippet in body["messages"][0]["content"] for _, body, _ in endpoint.requests) == 1
    saved = json.loads((tmp_path / "oss" / "rows.stats.json").read_text())
    assert saved["rows"] == 2 and saved["generator"] == GENERATOR and saved["config"]["teacher"]["url"] == endpoint.url


def test_require_tests_drops_untested_replies(endpoint, corpus, tmp_path):
    stats = oss_instruct(oss_config(corpus, tmp_path / "rows.jsonl", endpoint.url, require_tests=True))
    assert stats.rows == 1 and stats.dropped["no_tests"] == 1


@pytest.mark.parametrize("text, expected", [
    (OSS_REPLIES["good"], ("Write `rectangle_area(width, height)`: the area of a rectangle.", AREA,
                           "assert rectangle_area(2, 3) == 6\nassert rectangle_area(0, 5) == 0\n")),
    ("[Problem]\nAdd.\n[Solution]\n```py\ndef add(a, b):\n    return a + b\n```\n[Tests]\nassert add(1, 2) == 3",
     ("Add.", "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3")),  # bare test statements
    ("**[Problem]**\nAdd.\n\n**[Solution]**\n```python\nx = 1\n```", ("Add.", "x = 1\n", None)),
    ("[Problem]\nAdd.\n[Solution]\nJust add them.", "unparseable"),  # no code block
    ("[Solution]\n```python\nx = 1\n```", "unparseable"),  # no problem
    ("The [Problem] is hard.\n```python\nx = 1\n```", "unparseable"),  # a heading must stand alone
])
def test_parse_reply(text, expected):
    assert parse_reply(text) == expected


def test_oss_instruct_is_deterministic_for_a_seed(endpoint, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.py").write_text("".join(f"# CASE good\nvalue_{i} = {i}\n" for i in range(40)))
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        endpoint.requests.clear()
        oss_instruct(oss_config(src, tmp_path / f"{name}.jsonl", endpoint.url, n=3, max_lines=15, seed=seed))
        runs[name] = sorted(json.dumps(body) for _, body, _ in endpoint.requests)  # in flight together
        # one good reply, the same each time: the two other draws duplicate it
        assert json.loads((tmp_path / f"{name}.stats.json").read_text())["dropped"] == {"exact_duplicate": 2}
    assert runs["a"] == runs["b"] and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert runs["a"] != runs["c"]  # other snippets


def magpie_config(out: Path, url: str, **settings) -> MagpieConfig:
    return MagpieConfig(out=str(out), teacher=TeacherConfig(url=url, batch_size=1), n=len(MAGPIE_REQUESTS),
                        instruction_temperature=0.7, **settings)


def test_magpie_keeps_code_and_general_requests_and_counts_what_it_drops(endpoint, tmp_path):
    endpoint.invented = list(MAGPIE_REQUESTS)
    out = tmp_path / "magpie.jsonl"
    stats = magpie(magpie_config(out, endpoint.url))
    assert stats.dropped == {"empty_instruction": 1, "instruction_too_short": 1, "exact_duplicate": 1,
                             "contaminated": 2, "code_does_not_parse": 1, "instruction_too_long": 1,
                             "unfinished_response": 1}
    fibonacci, poem = rows_of(out)
    assert fibonacci["messages"] == [{"role": "user", "content": MAGPIE_FIBONACCI},
                                     {"role": "assistant", "content": f"Here it is:\n\n```python\n{FIB}```"}]
    assert fibonacci["entry_point"] == "fib" and fibonacci["tests"] == []
    assert poem["entry_point"] == "" and poem["messages"][0]["content"] == "Tell me a short poem about the sea."
    assert fibonacci["provenance"] == {"teacher": f"fake-teacher@{endpoint.url}", "pre_query": "<|im_start|>user\n",
                                       "seed": 0, "draw": 0, "generator": "codelm.synth.magpie/1"}
    assert poem["provenance"]["draw"] == 7
    # requests: the raw pre-query prefix, stopped at the end of the user's turn, then the request as a chat
    completions = [body for path, body, _ in endpoint.requests if path == "/v1/completions"]
    chats = [body for path, body, _ in endpoint.requests if path == "/v1/chat/completions"]
    assert len(completions) == stats.requests - len(chats) == len(MAGPIE_REQUESTS)
    assert all(b["prompt"] == "<|im_start|>user\n" and b["stop"] == ["<|im_end|>"] for b in completions)
    assert all(b["temperature"] == 0.7 for b in completions) and len({b["seed"] for b in completions}) == 10
    assert chats[0]["messages"] == [{"role": "user", "content": MAGPIE_FIBONACCI}] and chats[0]["temperature"] == 0


def test_magpie_code_only_and_a_system_message(endpoint, tmp_path):
    endpoint.invented = list(MAGPIE_REQUESTS)
    system = "The user asks Python programming questions."
    stats = magpie(magpie_config(tmp_path / "rows.jsonl", endpoint.url, code_only=True, system=system))
    [row] = rows_of(tmp_path / "rows.jsonl")
    assert stats.dropped["no_code"] == 1 and row["messages"][0] == {"role": "system", "content": system}
    prompt = next(body["prompt"] for path, body, _ in endpoint.requests if path == "/v1/completions")
    assert prompt == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n" == row["provenance"]["pre_query"]


def test_magpie_requests_are_seeded(endpoint, tmp_path):
    bodies = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        endpoint.invented, endpoint.requests[:] = list(MAGPIE_REQUESTS), []
        magpie(magpie_config(tmp_path / f"{name}.jsonl", endpoint.url, seed=seed))
        bodies[name] = [body for _, body, _ in endpoint.requests]
    assert bodies["a"] == bodies["b"] and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert [b.get("seed") for b in bodies["a"]] != [b.get("seed") for b in bodies["c"]]


def test_copies_of_a_prompt_are_its_samples_and_greedy_answers_once(endpoint, monkeypatch):
    monkeypatch.setenv("CODELM_TEST_KEY", "sk-test")
    teacher = HttpTeacher(TeacherConfig(url=endpoint.url, api_key_env="CODELM_TEST_KEY", batch_size=4))
    teacher.generate(["<|im_start|>user\n"] * 3, sampling(1.0, 1.0, 16, seed=5))
    seeds = [body["seed"] for _, body, _ in endpoint.requests]
    assert len(set(seeds)) == 3
    assert all(headers["Authorization"] == "Bearer sk-test" for _, _, headers in endpoint.requests)
    endpoint.requests.clear()
    teacher.generate(["<|im_start|>user\n"] * 3, sampling(1.0, 1.0, 16, seed=5))
    assert sorted(body["seed"] for _, body, _ in endpoint.requests) == sorted(seeds)
    endpoint.requests.clear()
    chat = [{"role": "user", "content": "Hi"}]
    assert teacher.generate([chat, chat], sampling(0.0, 1.0, 16, seed=5)) == ["I cannot help with that."] * 2
    assert len(endpoint.requests) == 1


def test_pre_query_prefix_for_chatml():
    assert pre_query(None) == ("<|im_start|>user\n", "<|im_end|>")
    assert pre_query(None, "Be brief.") == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", "<|im_end|>")
    with pytest.raises(UserError, match="marks no end of the user's turn"):
        pre_query("{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_pre_query_prefix_for_smollm2_template(smollm2_tokenizer_fields):
    template = smollm2_tokenizer_fields["tokenizer.chat_template"]
    prefix, end = pre_query(template)
    assert prefix == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                      "<|im_end|>\n<|im_start|>user\n") and end == "<|im_end|>"
    system = pre_query(template, "Answer in Python.")[0]
    assert system == "<|im_start|>system\nAnswer in Python.<|im_end|>\n<|im_start|>user\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", ["oss-instruct", "magpie"])
def test_a_teacher_url_that_is_down_is_one_line_and_nothing_is_written(command, corpus, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    corpus_args = ["--corpus", str(corpus)] if command == "oss-instruct" else []
    with pytest.raises(SystemExit) as exit:
        main(["synth", command, *corpus_args, "--teacher-url", url, "--out", str(tmp_path / "rows.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and err[-1].startswith(f"codelm: error: teacher URL {url} is unreachable: ")
    assert list(tmp_path.glob("rows*")) == []


def test_an_endpoint_answering_junk_is_one_line_and_nothing_is_written(endpoint, tmp_path, capsys):
    url = endpoint.url.replace("/v1", "/v1/broken")
    with pytest.raises(SystemExit) as exit:
        main(["synth", "magpie", "--teacher-url", url, "--teacher-model", "m", "--out", str(tmp_path / "rows.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2
    assert err[-1] == (f"codelm: error: teacher URL {url}/completions answered malformed JSON: "
                       "<html>502 Bad Gateway</html>")
    assert list(tmp_path.glob("rows*")) == []


def test_cli_builds_the_configs_from_their_defaults():
    args = build_parser().parse_args(["synth", "oss-instruct", "--corpus", "c", "--teacher", "ckpt", "--out", "o"])
    assert resolve(args).oss_instruct == OssInstructConfig("c", "o", TeacherConfig(checkpoint="ckpt"))
    args = build_parser().parse_args(["synth", "magpie", "--teacher-url", "http://h/v1", "--out", "o", "--code-only"])
    assert resolve(args).magpie == MagpieConfig("o", TeacherConfig(url="http://h/v1"), code_only=True)
    for given in ([], ["--teacher", "a", "--teacher-url", "b"]):  # a teacher is required, and only one
        with pytest.raises(UserError, match="exactly one"):
            resolve(build_parser().parse_args(["synth", "magpie", "--out", "o", *given]))


@pytest.fixture
def tiny_teacher(tmp_path, code_tok) -> Path:
    """A random codelm checkpoint with room in its context for an OSS-Instruct prompt."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=code_tok.vocab_size, dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                                    max_seq_len=512))
    return save_model(tmp_path / "teacher", model, code_tok)


def test_a_local_checkpoint_teaches_end_to_end(tiny_teacher, corpus, tmp_path):
    """A random model writes nothing usable: every request is made through the engine and every reply counted."""
    teacher = TeacherConfig(checkpoint=str(tiny_teacher), engine=EngineConfig(dtype="fp32"), batch_size=4)
    with pytest.raises(UserError, match=rf"synth magpie: no rows kept from 6 requests to checkpoint:{tiny_teacher} "
                                        r"\(dropped: instruction_too_long 6\)"):
        magpie(MagpieConfig(out=str(tmp_path / "m.jsonl"), teacher=teacher, n=6, max_instruction_tokens=8))
    with pytest.raises(UserError, match=r"synth oss-instruct: no rows kept from 3 requests .* unfinished 3\)"):
        oss_instruct(OssInstructConfig(corpus=str(corpus), out=str(tmp_path / "o.jsonl"), teacher=teacher, n=3,
                                       max_new_tokens=8, workers=1))
    assert list(tmp_path.glob("[mo].*")) == []


def test_an_interrupted_stage_resumes_from_its_journal_with_the_same_rows(endpoint, corpus, tmp_path, monkeypatch):
    whole = tmp_path / "whole.jsonl"
    settings = {"teacher": TeacherConfig(url=endpoint.url, batch_size=2)}
    oss_instruct(oss_config(corpus, whole, endpoint.url, **settings))
    asked_whole = len(endpoint.requests)
    assert not (tmp_path / "whole.replies.jsonl").exists()  # removed once the rows are written

    out = tmp_path / "resumed.jsonl"
    real, calls = HttpTeacher.generate, []

    def dies_on_the_third_call(self, prompts, params):
        calls.append(len(prompts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the teacher answers
        return real(self, prompts, params)

    monkeypatch.setattr(HttpTeacher, "generate", dies_on_the_third_call)
    with pytest.raises(KeyboardInterrupt):
        oss_instruct(oss_config(corpus, out, endpoint.url, **settings))
    assert not out.exists() and len(rows_of(tmp_path / "resumed.replies.jsonl")) == 1 + 2  # header, two calls
    monkeypatch.setattr(HttpTeacher, "generate", real)
    endpoint.requests.clear()
    oss_instruct(oss_config(corpus, out, endpoint.url, **settings))
    assert len(endpoint.requests) == asked_whole - 4  # the two journaled calls (2 snippets each) are not asked again
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "resumed.replies.jsonl").exists()
