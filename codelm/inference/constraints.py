"""Constrained decoding: a grammar decides which tokens may come next (llguidance).

A `Grammar` is a JSON schema, a regex, a Lark grammar or a list of choices, checked once against a
tokenizer's byte vocabulary (a bad one is a UserError naming the problem). Each sequence gets its own
`Matcher`, never shared: it masks the logits before sampling (so top-k and top-p see only allowed tokens),
advances on each accepted token, forks for n > 1 and beams, rolls back rejected speculative drafts, and
names the tokens the grammar forces (fast-forward: they are fed to the model without sampling).
Once the grammar is complete (`done`), generation stops without sampling an end-of-text token.

A grammar cannot make an unbounded field end (an integer without a maximum, a free string), and a small model
can loop inside one until max_tokens, leaving a valid prefix that is not a whole value. So in its last CLOSING
tokens a sequence whose grammar is not complete looks for a short way to finish (a depth-first search over
closing tokens, those that end more first: quotes, brackets, commas; a 0, a space, an empty list or object
for a value still missing; the bytes that finish a character; with the tokens the grammar forces on the way),
and once the tokens left are within SLACK of what that way needs, it takes it (end-of-text when the grammar
may end). Until then the model chooses freely; a sequence that finishes on its own is untouched.
"""

import json

import llguidance
import llguidance.torch as lltorch
import numpy as np
import torch
from llguidance import LLMatcher, LLParserLimits

from codelm.chat import JSON_STYLE
from codelm.errors import UserError
from codelm.tokenizer import Tokenizer

KINDS = ("json_object", "json_schema", "regex", "lark", "choice")
CLOSING = 32  # tokens left at which a still-open sequence starts looking for a way to finish
CLOSERS_FIRST = "\"}])',;0[{"  # closing characters, the ones that end more first (then openers: an empty list)
CLOSERS = set(CLOSERS_FIRST)
CONTINUATIONS = {bytes([b]) for b in range(0x80, 0xC0)}  # to finish a character cut mid-way before closing
SEARCH_BUDGET = 2000  # token checks per search
SLACK = 8  # held to the way once it needs this close to all that is left: one free token can lengthen it
LIMITS = LLParserLimits(verbose_errors=False)


class ByteVocabulary:
    """The tokenizer as llguidance sees it, sized to the model's rows (extra rows are never allowed), and which
    tokens close a structure. Building it serializes and decodes the whole vocabulary: build it once per model
    (Engine.constraint keeps it)."""

    def __init__(self, tokenizer: Tokenizer, rows: int):
        self.llg = llguidance.LLTokenizer(tokenizer.hf.to_str(), n_vocab=rows, eos_token=sorted(tokenizer.stop_ids))
        self.stop_ids = sorted(tokenizer.stop_ids)
        closers = [(CLOSERS_FIRST.index(text[0]), len(text), t) for t in range(tokenizer.vocab_size)
                   if t not in tokenizer.stop_ids and (text := tokenizer.decode([t]).strip()) and set(text) <= CLOSERS]
        spaces = [t for t in range(tokenizer.vocab_size) if tokenizer.decode([t]) == " "]  # before a value
        continuations = [t for t in range(tokenizer.vocab_size) if self.llg.decode_bytes([t]) in CONTINUATIONS]
        self.closers = [t for *_, t in sorted(closers)] + spaces + continuations  # likelier ends first


def grammar_text(kind: str, spec) -> str:
    """llguidance's grammar for a constraint given as OpenAI and vLLM spell them."""
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_STYLE)
    if kind == "json_schema":
        schema = spec if isinstance(spec, str) else json.dumps(spec)
        return LLMatcher.grammar_from_json_schema(schema, defaults=JSON_STYLE)
    if kind == "regex":
        return LLMatcher.grammar_from_regex(spec)
    if kind == "lark":
        return LLMatcher.grammar_from_lark(spec)
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) and c for c in spec):
            raise UserError("choice: give a non-empty list of non-empty strings")
        return llguidance.grammar_from("choice", json.dumps(spec))
    raise UserError(f"unknown constraint {kind!r}: choose from {', '.join(KINDS)}")


class Grammar:
    """A constraint checked against one tokenizer; every sequence under it gets `matcher()`."""

    def __init__(self, kind: str, spec, vocab: ByteVocabulary):
        self.kind, self.vocab, self.rows = kind, vocab, vocab.llg.vocab_size
        self.text = grammar_text(kind, spec)
        error = LLMatcher.validate_grammar(self.text, vocab.llg)
        if error:
            raise UserError(f"{kind}: {error.splitlines()[0]}")
        first = LLMatcher(vocab.llg, self.text, log_level=0, limits=LIMITS)
        if first.is_error():
            raise UserError(f"{kind}: {first.get_error().splitlines()[0]}")
        self._start = first

    def matcher(self) -> "Matcher":
        return Matcher(self._start.deep_copy(), self.rows, self.vocab)


class Matcher:
    """One sequence's place in the grammar."""

    def __init__(self, state: LLMatcher, rows: int, vocab: ByteVocabulary):
        self.state, self.rows, self.vocab = state, rows, vocab

    @property
    def done(self) -> bool:
        """Nothing more can follow: the sequence is complete."""
        return self.state.is_stopped()

    def accept(self, token: int):
        """Advance past a token the mask allowed; a token it forbade is a bug, not a user error."""
        if not self.state.consume_token(token):
            raise RuntimeError(f"the grammar refused token {token}: {self.state.get_error().splitlines()[0]}")

    def forced(self) -> list[int]:
        """Tokens the grammar allows alone from here, to feed without sampling."""
        return [] if self.done else self.state.compute_ff_tokens()

    def fork(self) -> "Matcher":
        return Matcher(self.state.deep_copy(), self.rows, self.vocab)

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` the grammar accepts from here (the state does not move)."""
        return self.state.validate_tokens(tokens)

    def finish(self, depth: int) -> list[int] | None:
        """A short way to complete the grammar from here with closing tokens (forced tokens included), at most
        `depth` tokens: [] when it may end now, None when none is found. Depth-first, likelier ends first, within
        SEARCH_BUDGET token checks, so it costs microseconds where the structure closes plainly."""
        if self.done or self.state.is_accepting():
            return []
        budget = SEARCH_BUDGET

        def walk(state: LLMatcher, path: list[int]) -> list[int] | None:
            nonlocal budget
            for token in self.vocab.closers:
                budget -= 1
                if budget < 0:
                    return None
                if state.validate_tokens([token]) != 1:
                    continue
                after = state.deep_copy()
                after.consume_token(token)
                forced = after.compute_ff_tokens()
                after.consume_tokens(forced)
                way = [*path, token, *forced]
                if len(way) > depth:
                    continue
                if after.is_stopped() or after.is_accepting():
                    return way
                found = walk(after, way)
                if found is not None or budget < 0:
                    return found
            return None

        return walk(self.state, [])

    def rollback(self, count: int):
        if count and not self.state.rollback(count):
            raise RuntimeError(f"the grammar could not roll back {count} tokens")


def allowed_rows(matchers: list[Matcher | None], rows: int) -> torch.Tensor:
    """(B, rows) bool: the tokens each matcher allows next; a row without a matcher allows everything."""
    bitmask = lltorch.allocate_token_bitmask(len(matchers), rows)  # all bits set
    for b, m in enumerate(matchers):
        if m is not None:
            lltorch.fill_next_token_bitmask(m.state, bitmask, b)
    bits = np.unpackbits(bitmask.numpy().view(np.uint8), axis=-1, bitorder="little")[:, :rows]
    return torch.from_numpy(bits.view(np.bool_))


def mask_logits(logits: torch.Tensor, matchers: list[Matcher | None], left: list[int] | None = None
                ) -> torch.Tensor:
    """Forbidden tokens get -inf; logits (B, V) with V the model's rows. `left`: tokens each row may still
    generate: a row with little more left than its way to finish needs is held to that way (module note)."""
    if all(m is None for m in matchers):
        return logits
    allowed = allowed_rows(matchers, logits.shape[-1])
    for b, m in enumerate(matchers):
        if m is not None and left is not None and left[b] <= CLOSING:
            way = m.finish(left[b])
            if way is not None and len(way) + SLACK >= left[b]:
                only = torch.zeros_like(allowed[b])
                only[way[:1] or m.vocab.stop_ids] = True
                allowed[b] &= only
    return torch.where(allowed.to(logits.device), logits, float("-inf"))
