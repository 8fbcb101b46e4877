"""`codelm serve` through the official `openai` client (and plain HTTP where the client hides the wire): a live
uvicorn on loopback serving a tiny random checkpoint in fp64, checked against the engine's offline output."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP client the openai package itself uses
import openai
import pytest
from conftest import REPO
from serve_live import LiveServer, break_prompt, tiny_checkpoint
from test_inference import char_tokenizer, random_model

from codelm.config import SamplingParams
from codelm.inference.engine import Engine

CONTEXT = 256


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, code_tok):
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt", code_tok, CONTEXT)


@pytest.fixture(scope="module")
def live(checkpoint):
    server = LiveServer(Engine.from_checkpoint(checkpoint, dtype="fp64"), max_n=4, max_stops=3)
    yield server
    server.close()


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def offline(live, prompt, **settings):
    """The engine's own greedy completion of a prompt (text or token ids)."""
    [[completion]] = live.engine.generate([prompt], SamplingParams(**settings))
    return completion


def sse_events(response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_models_and_completion_equal_the_engine(live, client):
    [model] = client.models.list().data
    assert model.id == "tiny" and model.model_extra["max_model_len"] == CONTEXT
    reply = client.completions.create(model="tiny", prompt="def parse(line):", max_tokens=12, temperature=0)
    expected = offline(live, "def parse(line):", max_new_tokens=12)
    assert reply.choices[0].text == expected.text and reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(live.engine.encode("def parse(line):"))
    assert reply.usage.completion_tokens == 12
    ids = live.engine.encode("import os")  # token ids are used as they are
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == offline(live, ids, max_new_tokens=5).text
    two = client.completions.create(model="tiny", prompt=["a = 1", "b = 2"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[2].text == offline(live, "b = 2", max_new_tokens=4).text == two.choices[3].text


def test_chat_streams_deltas_then_usage_then_done(live, client):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Sort a list."}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    body = {"model": "tiny", "messages": messages, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]" and all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


def test_samples_are_reproducible_by_seed(client):
    def texts(seed):
        reply = client.completions.create(model="tiny", prompt="class Node:", max_tokens=8, n=3, seed=seed,
                                          temperature=1.0, top_p=0.95, extra_body={"top_k": 50, "min_p": 0.01})
        return [c.text for c in reply.choices]

    first = texts(7)
    assert texts(7) == first and texts(8) != first
    assert len(set(first)) > 1  # the samples of one request differ from each other


def test_stop_strings_cut_across_token_boundaries(live, client):
    free = client.completions.create(model="tiny", prompt="for i in range(", max_tokens=12, temperature=0, logprobs=0)
    pieces = free.choices[0].logprobs.tokens
    k = next(
        i
        for i in range(3, len(pieces) - 1)
        if pieces[i] and pieces[i + 1] and "\ufffd" not in pieces[i] + pieces[i + 1]
    )
    stop = pieces[k][-1] + pieces[k + 1][0]  # spans the boundary between tokens k and k + 1
    expected = free.choices[0].text[: free.choices[0].text.index(stop)]
    cut = client.completions.create(model="tiny", prompt="for i in range(", max_tokens=12, temperature=0, stop=stop)
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected, "stop")
    streamed = client.completions.create(
        model="tiny", prompt="for i in range(", max_tokens=12, temperature=0, stop=[stop], stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_logprobs_and_echo(live, client):
    reply = client.completions.create(model="tiny", prompt="x = [1, 2", max_tokens=6, temperature=0, logprobs=2)
    lp = reply.choices[0].logprobs
    expected = offline(live, "x = [1, 2", max_new_tokens=6)
    assert lp.token_logprobs == pytest.approx(expected.logprobs)
    for chosen, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and top[chosen] == pytest.approx(value) == max(top.values())  # greedy took the best
    assert lp.text_offset == [sum(map(len, lp.tokens[:i])) for i in range(len(lp.tokens))]
    echoed = client.completions.create(
        model="tiny", prompt="x = [1, 2", max_tokens=6, temperature=0, logprobs=1, echo=True
    )
    choice = echoed.choices[0]
    prompt_tokens = len(live.engine.tok.encode("x = [1, 2"))
    assert choice.text == "x = [1, 2" + reply.choices[0].text
    assert len(choice.logprobs.tokens) == prompt_tokens + 6  # the prompt's first token is scored given the
    assert all(lp < 0 for lp in choice.logprobs.token_logprobs)  # document start that codelm puts before text
    assert choice.logprobs.token_logprobs[prompt_tokens:] == pytest.approx(lp.token_logprobs)
    chat = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(len(t.top_logprobs) == 3 for t in content)


def test_fill_in_the_middle_by_suffix_and_by_infill(live, client):
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    [expected] = live.engine.complete_middle(prefix, suffix, SamplingParams(max_new_tokens=10))
    reply = client.completions.create(model="tiny", prompt=prefix, suffix=suffix, max_tokens=10, temperature=0)
    assert reply.choices[0].text == expected.text
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 10, "temperature": 0}
    infill = httpx.post(f"{live.url}/infill", json=body).json()
    assert infill["content"] == expected.text and infill["stop"] is True and infill["tokens_predicted"] == 10
    extra = [{"filename": "util.py", "text": "def helper():\n    pass\n"}]
    with_extra = httpx.post(f"{live.url}/infill", json={**body, "input_extra": extra}).json()
    assert with_extra["tokens_evaluated"] > infill["tokens_evaluated"]
    with httpx.stream("POST", f"{live.url}/infill", json={**body, "stream": True}) as response:
        events = [json.loads(e) for e in sse_events(response)]
    assert "".join(e["content"] for e in events) == expected.text and events[-1]["stop"]


def test_suffix_without_fim_tokens_is_a_400_naming_them():
    server = LiveServer(Engine(random_model(len(char_tokenizer().hf.get_vocab()), seed=0), char_tokenizer()))
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="<fim_prefix>"):
            client.completions.create(model="tiny", prompt="ab", suffix="d", max_tokens=3)
        assert client.completions.create(model="tiny", prompt="ab", max_tokens=3).choices[0].text is not None
    finally:
        server.close()


BAD_REQUESTS = [  # (route, body or raw bytes, what the 4xx names)
    ("/v1/completions", b'{"prompt": "x", "max_tokens": ', "malformed JSON"),
    ("/v1/completions", {"prompt": 12}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "x", "top_p": 2}, "top_p"),
    ("/v1/completions", {"prompt": "x", "n": 5}, "n: at most 4"),
    ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d"]}, "stop: at most 3"),
    ("/v1/completions", {"prompt": "x", "stop": [""]}, "stop strings must be non-empty"),
    ("/v1/completions", {"prompt": "x", "logprobs": 9}, "logprobs"),
    ("/v1/completions", {"prompt": [], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [999999]}, "token id 999999"),
    ("/v1/completions", {"prompt": [1] * CONTEXT}, f"is {CONTEXT} tokens: the model's context of {CONTEXT}"),
    ("/v1/completions", {"prompt": [1, 2], "suffix": "x"}, "suffix"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "hi"}]}, "messages.0.role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 50}, "top_logprobs"),
    ("/infill", {"input_prefix": 3}, "input_prefix"),
    ("/infill", [1, 2], "body"),
    # a field the server does not implement is refused, never silently ignored
    ("/v1/completions", {"prompt": "x", "no_such_field": {"ignored": True}}, "no_such_field: not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 1},
     "frequency_penalty: not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi", "audio": {"id": "x"}}]},
     "message field 'audio' is not supported"),
    ("/infill", {"input_prefix": "x", "cache_prompt": True}, "cache_prompt: not supported"),
]


def test_bad_inputs_get_a_4xx_naming_the_field_while_good_requests_complete(live):
    good, bad = [], []

    def send_good(i):
        body = {
            "model": "tiny",
            "prompt": f"value_{i} = ",
            "max_tokens": 5,
            "temperature": 0,
            "user": "someone",  # harmless: no effect on the output, accepted
        }
        good.append(httpx.post(f"{live.url}/v1/completions", json=body, timeout=60))

    threads = [threading.Thread(target=send_good, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for route, body, named in BAD_REQUESTS:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = httpx.post(f"{live.url}{route}", content=content, headers={"content-type": "application/json"})
        bad.append((response, named))
    for t in threads:
        t.join()
    for response, named in bad:
        assert response.status_code == 400, (named, response.text)
        assert named in response.json()["error"]["message"], (named, response.text)
    assert [r.status_code for r in good] == [200] * 6
    assert all(r.json()["choices"][0]["text"] for r in good)


def test_a_full_queue_answers_429_with_retry_after(checkpoint):
    server = LiveServer(Engine.from_checkpoint(checkpoint, dtype="fp64"), max_queue=1)
    scheduler, gate = server.state.scheduler, threading.Event()
    step = scheduler.step
    scheduler.step = lambda: (gate.wait(), step())  # the loop holds still until the test lets it go
    body = {"prompt": "while True:", "max_tokens": 5, "temperature": 0}
    first = []
    waiting = threading.Thread(target=lambda: first.append(httpx.post(f"{server.url}/v1/completions", json=body)))
    try:
        waiting.start()
        while not scheduler.waiting:  # the first request takes the queue's only place
            time.sleep(0.01)
        response = httpx.post(f"{server.url}/v1/completions", json=body)
        assert response.status_code == 429 and response.headers["retry-after"] == "1"
        assert "busy" in response.json()["error"]["message"]
        gate.set()
        waiting.join()
        assert first[0].status_code == 200
        assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 200  # room again
    finally:
        gate.set()
        server.close()


def test_a_client_that_disconnects_frees_its_slot(live):
    scheduler, pool = live.state.scheduler, live.state.pool
    body = {"prompt": "import sys", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{live.url}/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        assert len(scheduler.running) == 1
    deadline = time.monotonic() + 10
    while scheduler.running or pool.available() < pool.num_blocks:
        assert time.monotonic() < deadline, "the disconnected request still holds its slot"
        time.sleep(0.02)


def test_metrics_count_requests_tokens_and_ttft(live, client):
    client.completions.create(model="tiny", prompt="def f():", max_tokens=3, temperature=0)
    text = httpx.get(f"{live.url}/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(values['codelm_requests_total{route="/v1/completions",status="200"}']) >= 1
    assert float(values["codelm_generation_tokens_total"]) >= 3
    assert float(values["codelm_time_to_first_token_seconds_count"]) >= 1
    assert "codelm_prefix_cache_hit_rate" in values and "codelm_queue_length" in values
    assert httpx.get(f"{live.url}/health").json() == {"status": "ok"}


def test_api_key_is_required_when_set(checkpoint):
    server = LiveServer(Engine.from_checkpoint(checkpoint, dtype="fp64"), api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0).models.list()
        assert openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret").models.list().data[0].id == "tiny"
        assert httpx.get(f"{server.url}/health").status_code == 200  # liveness probes need no key
    finally:
        server.close()


def test_cli_serves_and_warns_when_exposed_without_key(checkpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codelm",
            "serve",
            "--checkpoint",
            str(checkpoint),
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--dtype",
            "fp32",
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "codelm serve did not come up"
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert models["data"][0]["id"] == checkpoint.name
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert "warning: serving on 0.0.0.0 without --api-key" in stderr


def test_an_internal_error_fails_only_its_request(live, client, monkeypatch):
    break_prompt(monkeypatch, live.engine.encode("raise SystemError"))
    with pytest.raises(openai.InternalServerError, match="injected"):
        client.completions.create(model="tiny", prompt="raise SystemError", max_tokens=4)
    reply = client.completions.create(model="tiny", prompt="a = 2", max_tokens=4, temperature=0)
    assert reply.choices[0].text == offline(live, "a = 2", max_new_tokens=4).text
