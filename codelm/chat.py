"""Chat prompts: messages -> the model's chat template -> token ids; tools offered and called in them.

A checkpoint imported from HF or GGUF keeps its own Jinja chat template
(tokenizer_config.json), rendered here as transformers renders it (sandboxed
Jinja, trim_blocks, lstrip_blocks). A codelm-trained checkpoint has none and
gets ChatML, the format its <|im_start|>/<|im_end|> tokens are for.

The template's own special-token strings are mapped to their ids here, and
only those: the template is rendered with a placeholder for each message's
content, and the content is encoded as plain text, so a message that contains
"<|im_end|>" cannot end its turn early (prompt injection through the template).

Tools use the Hermes format (with_tools): their signatures join the system turn, calls are
`<tool_call>{"name", "arguments"}</tool_call>` blocks, results come back as `<tool_response>` blocks; as plain
text any template renders them. tools_grammar is the Lark grammar a reply's calls are decoded under,
parse_calls reads them back in OpenAI's shape.
"""

import json
import re
import uuid

from codelm.errors import UserError
from codelm.tokenizer import IM_END, IM_START, Tokenizer

# Tools are offered and called in the Hermes format (Qwen2.5, Hermes 2 Pro): any ChatML-style template renders
# them, since they become plain text in the system, assistant and user turns.
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
TOOLS_PROMPT = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                "with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor "
                "each function call, return a json object with function name and arguments within "
                f"{TOOL_OPEN}{TOOL_CLOSE} XML tags:\n{TOOL_OPEN}\n{{{{\"name\": <function-name>, \"arguments\": "
                f"<args-json-object>}}}}\n{TOOL_CLOSE}")
TEXT = r"TEXT: /(?s:.+)/ & ~/(?s:.*<tool_call>.*)/"  # a reply that opens no call (llguidance's & and ~)
# How constrained JSON is written (llguidance's JSON options): ", " and ": ", no free whitespace, where a small
# model would spend its whole budget on newlines; a schema's own "x-guidance" overrides it.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
CHATML = ("{% for message in messages %}{{ '" + IM_START + "' + message['role'] + '\n' + message['content'] + '"
          + IM_END + "\n' }}{% endfor %}{% if add_generation_prompt %}{{ '" + IM_START + "assistant\n' }}{% endif %}")


def with_tools(messages: list[dict], tools: list[dict]) -> list[dict]:
    """OpenAI-shaped messages (tool definitions, assistant tool_calls, role "tool" results) as plain
    role/content messages: the tools' signatures join the system message, an assistant's calls follow its
    text in <tool_call> blocks, and consecutive tool results become one user turn of <tool_response> blocks."""
    out = []
    if tools:
        listing = TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if messages and messages[0]["role"] in ("system", "developer"):
            out.append({"role": "system", "content": f"{messages[0]['content']}\n\n{listing}"})
            messages = messages[1:]
        else:
            out.append({"role": "system", "content": listing})
    previous = None
    for m in messages:
        if m["role"] == "tool":
            response = f"<tool_response>\n{m['content']}\n</tool_response>"
            if previous == "tool":
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response})
        else:
            calls = [f"{TOOL_OPEN}\n{json.dumps({'name': c['function']['name'], 'arguments': arguments(c)})}\n"
                     f"{TOOL_CLOSE}" for c in m.get("tool_calls") or []]
            content = "\n".join([m["content"], *calls] if m["content"] else calls)
            out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
        previous = m["role"]
    return out


def arguments(call: dict):
    """A call's arguments as a JSON value (OpenAI sends them as a JSON string)."""
    raw = call["function"].get("arguments") or "{}"
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise UserError(f"tool call {call['function']['name']}: arguments are not JSON: {raw[:80]!r}") from None


def render(messages: list[dict], template: str | None, add_generation_prompt: bool = True) -> str:
    """The text of messages [{"role", "content"}]; with add_generation_prompt it ends where the assistant's
    reply begins (a prompt), without it the conversation is whole (training data)."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template or CHATML).render(messages=messages,
                                                          add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise UserError(f"cannot render the chat template: {e}") from None


def _pieces(tok: Tokenizer, messages: list[dict], template: str | None, add_generation_prompt: bool):
    """(token ids, what they are) in order: a message's index for its content, "special" for a special token
    of the template, None for the template's own text."""
    if template is None:
        tok.require(IM_START, IM_END)
    placeholders = {f"\x00{i}\x00": i for i in range(len(messages))}
    text = render([{**m, "content": key} for key, m in zip(placeholders, messages)], template, add_generation_prompt)
    markers = [*placeholders, *sorted(tok.special, key=len, reverse=True)]
    for piece in re.split("(" + "|".join(map(re.escape, markers)) + ")", text):
        if piece in placeholders:
            yield tok.encode(messages[placeholders[piece]]["content"]), placeholders[piece]
        elif piece in tok.special:
            yield [tok.special[piece]], "special"
        elif piece:
            yield tok.encode(piece), None


def encode_chat(tok: Tokenizer, messages: list[dict], template: str | None) -> list[int]:
    """Token ids of the rendered chat, ending where the reply begins: special-token strings become their ids,
    the rest is plain text."""
    return [i for ids, _ in _pieces(tok, messages, template, add_generation_prompt=True) for i in ids]


def encode_conversation(tok: Tokenizer, messages: list[dict], template: str | None) -> tuple[list[int], list[bool]]:
    """Token ids of a whole conversation, through the same rendering as encode_chat, and which of them the
    model learns to write (SFT's loss mask): each assistant message's content and the template's text after it
    up to and including the first special token (its end of turn, so the model learns where to stop)."""
    ids, mask, in_reply, rendered = [], [], False, set()
    for piece, what in _pieces(tok, messages, template, add_generation_prompt=False):
        if isinstance(what, int):
            if in_reply:
                raise UserError(_no_end_of_turn())
            in_reply = messages[what]["role"] == "assistant"
            rendered.add(what)
        ids += piece
        mask += [in_reply] * len(piece)
        if what == "special":
            in_reply = False
    if in_reply:
        raise UserError(_no_end_of_turn())
    missing = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in rendered]
    if missing:
        raise UserError(f"the chat template does not render assistant message {missing[0]}: it cannot be trained on")
    return ids, mask


def _no_end_of_turn() -> str:
    return ("the chat template ends an assistant turn without a special token (such as <|im_end|>): the model "
            "could not learn where a reply ends")


def call_schema(functions: list[dict]) -> dict:
    """The JSON of one call: the name of one of the functions and arguments valid under its parameters."""
    options = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                "properties": {"name": {"const": f["name"]},
                               "arguments": f.get("parameters", {"type": "object", "properties": {}})}}
               for f in functions]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return {**schema, "x-guidance": JSON_STYLE}


def tools_grammar(functions: list[dict], choice: str, parallel: bool) -> str:
    """Lark (llguidance's dialect: %json, [lazy], & and ~ on terminals) for a reply under tool_choice `choice`
    ("none", "auto", "required"; a named function is "required" over that tool alone)."""
    if choice == "none":
        return f"start: TEXT\n{TEXT}\n"
    body = f'"\\n" %json {json.dumps(call_schema(functions))} "\\n{TOOL_CLOSE}"'
    more = f'("\\n{TOOL_OPEN}" {body})*' if parallel else ""
    if choice == "required":
        return f'start: "{TOOL_OPEN}" {body} {more}\n'
    # auto: text, or text that opens a call (the lazy lead ends at the first tag), then the calls
    return f'start: TEXT | lead {body} {more}\nlead[lazy]: /(?s:.*)/ "{TOOL_OPEN}"\n{TEXT}\n'


def parse_calls(text: str) -> tuple[str, list[dict]]:
    """(content before the first call, the calls in OpenAI's shape) of a reply in the Hermes format. The grammar
    makes every finished call parse; a reply cut by max_tokens inside a call keeps it as text."""
    content, _, rest = text.partition(TOOL_OPEN)
    calls = []
    for block in (TOOL_OPEN + rest).split(TOOL_OPEN)[1:]:
        body, closed, _ = block.partition(TOOL_CLOSE)
        if not closed:
            return (text, []) if not calls else (content.strip(), calls)
        call = json.loads(body)
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}})
    return content.strip() if calls else content, calls
