"""Chat prompts: messages -> the model's chat template -> token ids.

A checkpoint imported from HF or GGUF keeps its own Jinja chat template
(tokenizer_config.json), rendered here as transformers renders it (sandboxed
Jinja, trim_blocks, lstrip_blocks). A codelm-trained checkpoint has none and
gets ChatML, the format its <|im_start|>/<|im_end|> tokens are for.

The template's own special-token strings are mapped to their ids here, and
only those: the template is rendered with a placeholder for each message's
content, and the content is encoded as plain text, so a message that contains
"<|im_end|>" cannot end its turn early (prompt injection through the template).
"""

import re

from codelm.errors import UserError
from codelm.tokenizer import IM_END, IM_START, Tokenizer

CHATML = ("{% for message in messages %}{{ '" + IM_START + "' + message['role'] + '\n' + message['content'] + '"
          + IM_END + "\n' }}{% endfor %}{% if add_generation_prompt %}{{ '" + IM_START + "assistant\n' }}{% endif %}")


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
