"""Byte-level BPE for code, on Hugging Face `tokenizers`.

Pre-tokenization is Llama 3's split pattern with one change for code: digits
are split one by one (as StarCoder does), so numbers share statistics. Runs of
whitespace stay together, so indentation costs a token or two per line.
Byte-level means every byte sequence round-trips: decode(encode(text)) == text.

Special tokens are defined here once and used by name everywhere. Document text
is always encoded as plain text: a file that literally contains
"<|endoftext|>" is tokenized as those characters, never as the special token.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from codelm.errors import UserError
from codelm.io import atomic_write_text

EOT = "<|endoftext|>"
FIM_PREFIX = "<fim_prefix>"
FIM_MIDDLE = "<fim_middle>"
FIM_SUFFIX = "<fim_suffix>"
FIM_PAD = "<fim_pad>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
REPO_NAME = "<repo_name>"
FILE_SEP = "<file_sep>"
SPECIAL_TOKENS = [EOT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD, IM_START, IM_END, REPO_NAME, FILE_SEP]

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERN = LLAMA3_SPLIT.replace(r"|\p{N}{1,3}|", r"|\p{N}|")  # codelm's: digits one by one


class Tokenizer:
    """A thin wrapper that fixes the conventions: plain-text encoding, named special ids.

    A tokenizer codelm trained has every special token; one imported with a model
    may lack some (SmolLM2 has no FIM tokens): `require` names what is missing.
    `prefix_ids` start every document (codelm: <|endoftext|>, the separator its
    models saw before each document) and `stop_ids` end generation; an imported
    model's checkpoint sets both from its own config, and its chat template
    (None: ChatML, see codelm.chat)."""

    def __init__(self, hf: HFTokenizer, required=tuple(SPECIAL_TOKENS)):
        self.hf = hf
        self.hf.encode_special_tokens = True  # document text never yields special tokens
        self.special = {t: i for t in SPECIAL_TOKENS if (i := hf.token_to_id(t)) is not None}
        self.require(*required)
        self.eot_id = self.special.get(EOT)
        self.prefix_ids = [self.eot_id] if self.eot_id is not None else []
        self.stop_ids = {self.eot_id} if self.eot_id is not None else set()
        self.chat_template: str | None = None

    def require(self, *names: str) -> list[int]:
        """Ids of these special tokens, or a UserError naming the missing ones."""
        missing = [t for t in names if t not in self.special]
        if missing:
            raise UserError(f"tokenizer lacks special tokens {missing} (a codelm-trained tokenizer has them all: "
                            "`codelm tokenizer train`)")
        return [self.special[t] for t in names]

    @classmethod
    def load(cls, path: str | Path, required=tuple(SPECIAL_TOKENS)) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer not found: {path}")
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
            raise UserError(f"cannot read tokenizer {path}: {e}") from None
        return cls(hf, required)

    def save(self, path: str | Path):
        atomic_write_text(path, self.hf.to_str(pretty=True))

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> list[int]:
        """UTF-8 length of each token id; 0 for special tokens (they are not text, so bits-per-byte skips them)."""
        lengths = [0] * self.vocab_size
        specials = set(self.special.values())
        for token, idx in self.hf.get_vocab().items():
            # byte-level BPE stores one printable character per byte
            lengths[idx] = 0 if idx in specials else len(token)
        return lengths


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> Tokenizer:
    """Train byte-level BPE on an iterable of documents; special tokens take the first ids."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(
            f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {256 + len(SPECIAL_TOKENS)}"
        )
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf)
