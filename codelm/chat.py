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


def render(messages: list[dict], template: str | None) -> str:
    """The prompt text for messages [{"role", "content"}], ending where the assistant's reply begins."""
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template or CHATML).render(messages=messages, add_generation_prompt=True)
    except TemplateError as e:
        raise UserError(f"cannot render the chat template: {e}") from None


def encode_chat(tok: Tokenizer, messages: list[dict], template: str | None) -> list[int]:
    """Token ids of the rendered chat: special-token strings become their ids, the rest is plain text."""
    if template is None:
        tok.require(IM_START, IM_END)
    placeholders = {f"\x00{i}\x00": m["content"] for i, m in enumerate(messages)}
    text = render([{**m, "content": key} for key, m in zip(placeholders, messages)], template)
    markers = [*placeholders, *sorted(tok.special, key=len, reverse=True)]
    ids = []
    for piece in re.split("(" + "|".join(map(re.escape, markers)) + ")", text):
        if piece in tok.special:
            ids.append(tok.special[piece])
        elif piece:
            ids += tok.encode(placeholders.get(piece, piece))
    return ids
