"""Stop strings matched on decoded text, and streaming text that never shows them.

A stop string can span token boundaries ("\\ndef" may arrive as "\\n" + "def"
or inside one token "):\\ndef"), so matching runs on the decoded text of all
tokens so far, never on single tokens. While streaming, text that could still
turn out to be the start of a stop string, or an incomplete UTF-8 character,
is held back until the next token settles it.
"""

from codelm.tokenizer import Tokenizer

INCOMPLETE = "\ufffd"  # what decoding shows for a partial UTF-8 character


def partial_tail(text: str, marker: str) -> int:
    """How many characters at the end of text begin `marker` (0: none): text that must wait for the next token."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def first_stop(text: str, stops: list[str], start: int = 0) -> int | None:
    """Where the earliest stop string begins in text (searching from start), or None."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


class StopTracker:
    def __init__(self, tok: Tokenizer, stops: list[str]):
        self.tok, self.stops = tok, list(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    @classmethod
    def replayed(cls, tok: Tokenizer, stops: list[str], ids: list[int]) -> "StopTracker":
        """A tracker that has seen these tokens (none of them ended the text): how a sequence that went back
        gets its tracker again."""
        tracker = cls(tok, stops)
        for token in ids:
            tracker.push(token)
        return tracker

    def push(self, token_id: int) -> str:
        """Add one token; the new text that is safe to show (sets `stopped` when a stop string appears)."""
        self.ids.append(token_id)
        text = self.tok.decode(self.ids)
        start = max(0, len(self.text) - self.longest - 1)  # a new match must reach into the new text
        cut = first_stop(text, self.stops, start)
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self.flush()
        self.text = text
        safe = len(text) - self._undecided_tail(text)
        delta = text[self.emitted : safe]
        self.emitted = max(self.emitted, safe)
        return delta

    def flush(self) -> str:
        """Whatever is held back, at the end of generation."""
        delta = self.text[self.emitted :]
        self.emitted = len(self.text)
        return delta

    def _undecided_tail(self, text: str) -> int:
        incomplete = len(text) - len(text.rstrip(INCOMPLETE))
        return max([incomplete, *(partial_tail(text, s) for s in self.stops)])
