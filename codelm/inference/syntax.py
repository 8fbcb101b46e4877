"""Code that parses: a Python-syntax constraint, checked by Python's own compiler at line ends, with backtracking.

Why not a grammar: Python's blocks are made by indentation, which a parser sees as INDENT/DEDENT tokens from a
stateful lexer. llguidance's Lark dialect cannot declare such tokens, and a context-free grammar without them
accepts programs Python refuses (or refuses good ones). The stdlib compiler knows Python exactly, and `codeop`
(what the interactive prompt uses) tells a source that is complete, incomplete (an open bracket or string, a
block with no body yet) or wrong. In Python a line that is wrong stays wrong whatever follows, so checking at
each newline finds a mistake as soon as it can be found:

- when a token ends a line, the program so far (the prompt's text, then the completion up to that newline)
  must be complete or incomplete; if it is wrong, the sequence goes back to the token the compiler blames
  (for an indentation error, the token that holds the line's indentation) and that token is banned there;
  greedy decoding then takes its next choice, sampling samples again;
- when the sequence ends (end-of-text or a stop string), the whole program must compile, or it goes back
  likewise (often banning the token that ended it too early);
- it never goes back before the last line that was found good, and it backtracks at most `retries` times;
  then the sequence goes on unchecked (`gave_up`), so a model that cannot write the line still finishes.
"""

import bisect
import codeop
import warnings
from dataclasses import dataclass, field

import torch

from codelm.errors import UserError
from codelm.tokenizer import Tokenizer

RETRIES = 16


@dataclass
class Backtrack:
    """Keep the first `keep` generated tokens, and do not take `ban` after them again."""

    keep: int
    ban: int


def syntax_error(source: str, complete: bool) -> SyntaxError | None:
    """The compiler's verdict: None when the source is a program (complete) or, unless `complete`, can still
    become one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like are warnings, not errors
        try:
            if complete:
                compile(source, "<completion>", "exec")
            else:
                codeop.compile_command(source, "<completion>", "exec")
        except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: a NUL byte
            return e if isinstance(e, SyntaxError) else SyntaxError(str(e))
    return None


def program_syntax(program: str, cut: bool) -> str:
    """"ok" when the program compiles; "unfinished" when it was `cut` at a token limit and is still a valid start
    of one (what the constraint promises then); else "error"."""
    if syntax_error(program, complete=True) is None:
        return "ok"
    if cut and syntax_error(program[:program.rfind("\n") + 1], complete=False) is None:
        return "unfinished"
    return "error"


def blamed_char(source: str, error: SyntaxError) -> int | None:
    """The index in `source` of the character the error blames: for an indentation error, the last character
    before the line's first non-blank one (its indentation, or the newline before it); None when unknown."""
    if error.lineno is None:
        return None
    lines = source.splitlines(keepends=True)
    start = sum(len(line) for line in lines[:error.lineno - 1])
    line = lines[error.lineno - 1] if error.lineno <= len(lines) else ""
    if isinstance(error, IndentationError):
        return start + len(line) - len(line.lstrip(" \t")) - 1
    return start + max((error.offset or 1) - 1, 0)


class PythonSyntax:
    """The constraint for one tokenizer; each sequence gets `checker(prefix)`. `continues_prompt`: the completion
    continues the prompt's code (a base prompt), else it is a program by itself (a chat reply)."""

    def __init__(self, tok: Tokenizer, line_ends: frozenset[int], continues_prompt: bool = True,
                 retries: int = RETRIES):
        self.tok, self.line_ends, self.continues_prompt, self.retries = tok, line_ends, continues_prompt, retries

    @staticmethod
    def line_ends(tok: Tokenizer) -> frozenset[int]:
        """The tokens whose text holds a newline: the ones after which a line is checked (decodes the whole
        vocabulary once; Engine.constraint keeps the result)."""
        return frozenset(i for i in range(tok.vocab_size) if "\n" in tok.decode([i]))

    def checker(self, prefix: str) -> "SyntaxChecker":
        """A checker for a completion that continues `prefix` ('' for a program by itself). UserError when the
        prefix's finished lines are already not Python."""
        error = syntax_error(prefix[:prefix.rfind("\n") + 1], complete=False)
        if error is not None:
            raise UserError(f"--constrain python: the prompt is not the start of a Python program "
                            f"(line {error.lineno}: {error.msg})")
        return SyntaxChecker(self, prefix)


def without(logits: torch.Tensor, banned: list[set[int]]) -> torch.Tensor:
    """Logits (B, V) with each row's banned tokens at -inf."""
    if not any(banned):
        return logits
    logits = logits.clone()
    for b, tokens in enumerate(banned):
        if tokens:
            logits[b, sorted(tokens)] = float("-inf")
    return logits


@dataclass
class SyntaxChecker:
    """One sequence's checks. `good`: generated tokens before the newline token of the last line found good;
    they are final. `bans[i]`: tokens not to take after i generated tokens."""

    syntax: PythonSyntax
    prefix: str
    good: int = 0
    backtracks: int = 0
    bans: dict[int, set[int]] = field(default_factory=dict)

    @property
    def gave_up(self) -> bool:
        return self.backtracks >= self.syntax.retries

    def banned(self, length: int) -> set[int]:
        return set() if self.gave_up else self.bans.get(length, set())

    def after(self, tokens: list[int], new: int, text: str | None) -> Backtrack | None:
        """Check a sequence whose last `new` tokens just arrived: `text` is its final text when it has ended
        (stop string or end-of-text), None while it goes on. A Backtrack when it must go back."""
        if self.gave_up:
            return None
        if text is not None:
            return self._verdict(tokens, self.prefix + text, complete=True)
        last = max((i for i in range(len(tokens) - new, len(tokens)) if tokens[i] in self.syntax.line_ends),
                   default=None)
        if last is None:
            return None
        decoded = self.syntax.tok.decode(tokens)
        backtrack = self._verdict(tokens, self.prefix + decoded[:decoded.rfind("\n") + 1], complete=False)
        if backtrack is None:
            self.good = last
        return backtrack

    def _verdict(self, tokens: list[int], source: str, complete: bool) -> Backtrack | None:
        error = syntax_error(source, complete)
        if error is None:
            return None
        keep = max(self._blame(tokens, source, error, complete), self.good)
        self.bans = {i: b for i, b in self.bans.items() if i <= keep}
        self.bans.setdefault(keep, set()).add(tokens[keep])
        self.backtracks += 1
        return Backtrack(keep, tokens[keep])

    def _blame(self, tokens: list[int], source: str, error: SyntaxError, complete: bool) -> int:
        """The generated token to go back to. At the end, the token that ended the sequence, unless the error
        is a plain one in the last line (the only line no line check has seen); the lines before were good
        or unfinished, so ending there was the mistake."""
        char = blamed_char(source, error)
        last_line = source.rfind("\n") + 1
        if char is None or char >= len(source) or complete and (char < last_line or
                                                                  isinstance(error, IndentationError)):
            return len(tokens) - 1
        return self._token_at(tokens, char - len(self.prefix))

    def _token_at(self, tokens: list[int], char: int) -> int:
        """The generated token that holds character `char` of the completion's text (0 before it)."""
        if char < 0:
            return 0
        ends, text = [], ""
        for i in range(len(tokens)):  # decoded one prefix at a time: a token may hold part of a character
            text = self.syntax.tok.decode(tokens[:i + 1])
            ends.append(len(text))
            if len(text) > char:
                break
        return min(bisect.bisect_right(ends, char), len(tokens) - 1)
