"""Structured outputs and tool calls through `codelm serve`, with the official openai client unchanged: a live
server on loopback with a tiny random model, whose text is noise but whose every reply must obey the grammar."""

import json

import httpx2 as httpx
import jsonschema
import openai
import pydantic
import pytest
from serve_live import LiveServer, tiny_checkpoint

from codelm.inference.engine import Engine

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days", "unit"],
          "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1,
                                                                               "maximum": 7},
                         "unit": {"enum": ["C", "F"]}}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the forecast for a city",
                                            "parameters": SCHEMA}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def live(tmp_path_factory, code_tok):
    checkpoint = tiny_checkpoint(tmp_path_factory.mktemp("structured") / "ckpt", code_tok, 1024)
    server = LiveServer(Engine.from_checkpoint(checkpoint, dtype="fp32"), max_n=4)
    yield server
    server.close()


@pytest.fixture
def client(live):
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def ask(client, **settings):
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                          **{"max_tokens": 200, **settings})


def test_json_schema_response_format_validates_for_every_sample(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": SCHEMA}}
    reply = ask(client, response_format=fmt, n=4, temperature=1.0, seed=2)
    assert len(reply.choices) == 4
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
    assert json.loads(ask(client, response_format={"type": "json_object"}, temperature=0).choices[0]
                      .message.content).__class__ is dict


def test_parse_with_a_pydantic_model(client):
    class Forecast(pydantic.BaseModel):  # bounded: a random model would write an unbounded string forever
        city: str = pydantic.Field(max_length=8)
        days: int = pydantic.Field(ge=1, le=7)

    parsed = client.beta.chat.completions.parse(model="tiny", messages=[{"role": "user", "content": "Paris"}],
                                                response_format=Forecast, max_tokens=300, temperature=0)
    assert isinstance(parsed.choices[0].message.parsed, Forecast)


def test_guided_extras_on_both_routes(client):
    reply = client.completions.create(model="tiny", prompt="id: ", max_tokens=30, temperature=0,
                                      extra_body={"guided_regex": "[0-9]{3}-[a-z]{2}"})
    assert len(reply.choices[0].text) == 6 and reply.choices[0].text[3] == "-"
    choice = ask(client, extra_body={"guided_choice": ["sunny", "rainy"]}, temperature=0).choices[0].message.content
    assert choice in ("sunny", "rainy")
    lark = 'start: "SELECT " NAME " FROM " NAME\nNAME: /[a-z]{1,6}/'
    reply = client.completions.create(model="tiny", prompt="sql: ", max_tokens=40, temperature=0,
                                      extra_body={"guided_grammar": lark})
    assert reply.choices[0].text.startswith("SELECT ") and " FROM " in reply.choices[0].text


def test_forced_tokens_take_no_step_of_their_own(client, live):
    sentence = "the quick brown fox jumps over the lazy dog and then over the lazy cat"
    steps = live.state.metrics.steps
    reply = client.completions.create(model="tiny", prompt="say: ", max_tokens=60, temperature=0,
                                      extra_body={"guided_choice": [sentence]})
    assert reply.choices[0].text == sentence and reply.usage.completion_tokens > 10
    assert live.state.metrics.steps - steps <= 2  # the first token is sampled; the grammar then forces the rest
    scored = client.completions.create(model="tiny", prompt="say: ", max_tokens=60, temperature=0, logprobs=0,
                                       extra_body={"guided_choice": [sentence]}).choices[0]
    assert scored.text == sentence and len(scored.logprobs.token_logprobs) == reply.usage.completion_tokens


def test_prefix_cached_requests_with_different_constraints_do_not_interfere(client, live):
    prompt = "shared prefix " * 20
    a = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0,
                                  extra_body={"guided_choice": ["alpha", "beta"]})
    b = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0,
                                  extra_body={"guided_regex": "[0-9]{1,4}x"})
    c = client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert live.state.pool.hit_tokens > 0  # the later requests reused the first one's blocks
    assert a.choices[0].text in ("alpha", "beta") and b.choices[0].text.endswith("x")
    assert c.choices[0].text not in ("alpha", "beta")


@pytest.mark.parametrize("stream", [False, True])
def test_tool_call_round_trip(client, stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = create(client, stream, messages=messages, tools=[WEATHER, TIME], tool_choice="required",
                   parallel_tool_calls=False)
    assert first.finish_reason == "tool_calls" and len(first.message.tool_calls) == 1
    call = first.message.tool_calls[0]
    assert call.id and call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMA if call.function.name == "get_weather" else TIME["function"]["parameters"])
    messages += [first.message.model_dump(exclude_none=True) if stream else first.message,
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny"})}]
    answer = create(client, stream, messages=messages, tools=[WEATHER, TIME], tool_choice="none")
    assert answer.finish_reason in ("stop", "length") and not answer.message.tool_calls
    assert "<tool_call>" not in (answer.message.content or "")


def test_named_and_auto_tool_choice(client):
    named = create(client, False, messages=[{"role": "user", "content": "time?"}], tools=[WEATHER, TIME],
                   tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert {c.function.name for c in named.message.tool_calls} == {"get_time"}  # parallel: maybe several
    for seed in range(3):  # auto: text or calls, and any call parses and validates
        auto = create(client, False, messages=[{"role": "user", "content": "hi"}], tools=[TIME], temperature=1.0,
                      seed=seed)
        for call in auto.message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])


def create(client, stream: bool, **settings):
    """One choice, whole or put together from the stream's deltas as the openai client's users do."""
    settings = {"model": "tiny", "max_tokens": 200, "temperature": 0, **settings}
    if not stream:
        return client.chat.completions.create(**settings).choices[0]
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **settings):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for part in delta.tool_calls or []:
            entry = calls.setdefault(part.index, {"id": "", "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
            entry["id"] += part.id or ""
            entry["function"]["name"] += part.function.name or ""
            entry["function"]["arguments"] += part.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    message = openai.types.chat.ChatCompletionMessage(role="assistant", content=content or None,
                                                      tool_calls=list(calls.values()) or None)
    return openai.types.chat.chat_completion.Choice(index=0, message=message, finish_reason=finish)


@pytest.mark.parametrize("body, message", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "json_schema: Invalid type"),
    ({"extra_body": {"guided_grammar": "start: foo"}}, 'unknown name: "foo"'),
    ({"extra_body": {"guided_regex": "a(b", "guided_choice": ["a"]}}, "at most one of response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "no tool named 'nope'"),
    ({"extra_body": {"logit_bias": {"1": 5}}}, "logit_bias: not supported by this server"),
    ({"extra_body": {"presence_penalty": 0.5}}, "presence_penalty: not supported"),
    ({"extra_body": {"constrain": "python"}, "logprobs": True}, "cannot report logprobs"),
    ({"extra_body": {"constrain": "python", "guided_regex": "a"}}, "at most one of response_format"),
    ({"extra_body": {"constrain": "java"}}, "constrain: Input should be 'python'"),
])
def test_bad_requests_are_400s_and_the_server_keeps_serving(client, body, message):
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, **body)
    assert message in error.value.message
    assert ask(client, temperature=0, max_tokens=4).choices[0].finish_reason == "length"


def test_tools_on_completions_is_refused(live):
    response = httpx.post(f"{live.url}/v1/completions", json={"prompt": "x", "tools": [WEATHER]}, timeout=30)
    assert response.status_code == 400 and "tools: not supported" in response.json()["error"]["message"]
