"""Structured outputs and tool calls for the server: the request fields that name a grammar.

OpenAI's `response_format` (json_object, json_schema), vLLM's extras (`guided_json`, `guided_regex`,
`guided_grammar` in Lark, `guided_choice`) and codelm's `constrain: "python"` (code that parses) each name
one constraint. Tools are offered to the model in its
chat prompt (codelm.chat renders them) and called in the Hermes format the prompt describes,

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

whose JSON is generated under a schema built from the tools' parameter schemas, so the arguments always parse
and validate. tool_choice "required" or a named function constrains the whole reply to calls; "auto" lets the
model write text, and once it opens a call, the call is decoded under that grammar; "none" allows no call.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A request part whose unknown fields are refused (400 naming them), never ignored."""

    model_config = ConfigDict(extra="forbid")


class JsonSchemaFormat(Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None  # the schema is always enforced


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class FunctionDef(Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # the parameters are always enforced


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


def constraint_of(response_format: ResponseFormat | None, guided_json, guided_regex: str | None,
                  guided_grammar: str | None, guided_choice: list[str] | None,
                  python: str | None = None) -> tuple[str, object] | None:
    """The one constraint a request asks for, as (kind, spec) for Engine.constraint; ValueError if several.
    `python`: the spec of a Python-syntax constraint ("prompt" or "reply"), None without one."""
    given = [("python", python)] if python is not None else []
    if response_format is not None and response_format.type == "json_object":
        given.append(("json_object", None))
    if response_format is not None and response_format.type == "json_schema":
        if response_format.json_schema is None:
            raise ValueError("response_format: type json_schema needs a json_schema object")
        given.append(("json_schema", response_format.json_schema.schema_))
    if guided_json is not None:
        given.append(("json_schema", guided_json))
    if guided_regex is not None:
        given.append(("regex", guided_regex))
    if guided_grammar is not None:
        given.append(("lark", guided_grammar))
    if guided_choice is not None:
        given.append(("choice", guided_choice))
    if len(given) > 1:
        raise ValueError(f"give at most one of response_format, guided_* and constrain; got {len(given)}")
    return given[0] if given else None
