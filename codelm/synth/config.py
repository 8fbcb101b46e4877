"""Settings of the synth stages: the only home of their defaults, which the CLI shows.

Kept apart from the stages, with no heavy imports, so that `codelm` builds its
parser from these fields without importing datatrove or the sandbox (the
shared codelm/config.py holds the training and evaluation configs).
"""

from dataclasses import dataclass, field

from codelm.config import EngineConfig, knob
from codelm.errors import UserError

CORPUS_HELP = "a `codelm curate` output directory, or a directory or file of Python code"
OUT_HELP = "the JSONL file to write (NAME.jsonl; NAME.stats.json and NAME.config.toml beside it)"


@dataclass
class MineConfig:
    """`codelm synth mine`: which corpus, where the rows go, and the filters' bounds."""

    corpus: str = knob("", CORPUS_HELP)
    out: str = knob("", OUT_HELP)
    max_lines: int = knob(60, "the function as written, docstring and decorators included")
    max_chars: int = knob(3000, "drop functions longer than this many characters")
    min_docstring_words: int = knob(3, "'Helper.' is no request")
    limit: int = knob(0, "stop after this many rows (0: all)")
    seed: int = knob(0, "picks each row's phrasing template")
    tests: bool = knob(True, "run doctests in the sandbox: record asserts, drop functions that fail their own")
    workers: int = knob(0, "sandbox processes (0: one per core)")

    def check(self):
        require_paths(corpus=self.corpus, out=self.out)
        if self.max_lines < 1 or self.max_chars < 1:
            raise UserError("--max-lines and --max-chars must be >= 1")
        if self.limit < 0 or self.workers < 0 or self.min_docstring_words < 0:
            raise UserError("--limit and --workers must be >= 0")


@dataclass
class TeacherConfig:
    """Who writes the teacher stages' text: a local checkpoint through the engine, or an OpenAI-compatible
    endpoint (a big model served elsewhere)."""

    checkpoint: str = knob("", "a codelm checkpoint directory (trained or imported), run through the engine")
    url: str = knob("", "an OpenAI-compatible endpoint, e.g. http://host:8000/v1 (its /chat/completions; Magpie "
                    "also its /completions)")
    model: str = knob("", "the endpoint's model name ('': the first its /models lists)")
    api_key_env: str = knob("OPENAI_API_KEY", "the environment variable holding the endpoint's key, if it needs one")
    template: str = knob("", "the teacher's chat template, a Jinja file or a tokenizer_config.json; '': the "
                         "checkpoint's own, ChatML for a URL (Magpie's pre-query prefix comes from it)")
    timeout: float = knob(300.0, "seconds to wait for one reply from the endpoint")
    batch_size: int = knob(16, "prompts per teacher call: the engine's batch, or requests in flight to the endpoint")
    engine: EngineConfig = field(default_factory=EngineConfig)

    def check(self):
        if bool(self.checkpoint) == bool(self.url):
            raise UserError("give the teacher as exactly one of --teacher CHECKPOINT and --teacher-url URL "
                            "(teacher.checkpoint, teacher.url)")
        if self.timeout <= 0 or self.batch_size < 1:
            raise UserError("--timeout must be > 0 and --batch-size >= 1")


@dataclass
class OssInstructConfig:
    """`codelm synth oss-instruct`: snippets of which corpus, how many, and how the teacher samples."""

    corpus: str = knob("", CORPUS_HELP)
    out: str = knob("", OUT_HELP)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    n: int = knob(100, "snippets drawn, one teacher request each; rows kept are fewer")
    seed: int = knob(0, "picks the snippets and seeds the teacher's sampling")
    min_lines: int = knob(3, "a snippet's lines, at least (it starts on a non-blank one)")
    max_lines: int = knob(15, "a snippet's lines, at most (Magicoder: 1 to 15)")
    temperature: float = knob(0.0, "0: greedy (Magicoder's)")
    top_p: float = knob(1.0, "nucleus sampling when temperature > 0")
    max_new_tokens: int = knob(1024, "a reply cut here is dropped (unfinished)")
    require_tests: bool = knob(False, "drop replies without tests (else kept untested, with 'tests': [])")
    workers: int = knob(0, "sandbox processes for the tests (0: one per core)")

    def check(self):
        require_paths(corpus=self.corpus, out=self.out)
        if self.n < 1 or not 1 <= self.min_lines <= self.max_lines:
            raise UserError("--n must be >= 1 and 1 <= --min-lines <= --max-lines")
        check_sampling(self.temperature, self.top_p, self.max_new_tokens)
        if self.workers < 0:
            raise UserError("--workers must be >= 0")


@dataclass
class MagpieConfig:
    """`codelm synth magpie`: how many requests the teacher invents, how it samples them and its answers."""

    out: str = knob("", OUT_HELP)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    n: int = knob(100, "requests invented (one teacher request each, and one more per answer); rows kept are fewer")
    seed: int = knob(0, "seeds the teacher's sampling")
    system: str = knob("", "a system message before the user's turn: steers the invented requests (kept in the rows)")
    instruction_temperature: float = knob(1.0, "Magpie's: diverse requests")
    instruction_top_p: float = knob(1.0, "nucleus sampling of the requests")
    max_instruction_tokens: int = knob(256, "a request not ended by then is dropped (instruction_too_long)")
    min_instruction_words: int = knob(3, "a request of fewer words is dropped")
    temperature: float = knob(0.0, "the answer; 0: greedy (Magpie's)")
    max_new_tokens: int = knob(1024, "an answer cut here is dropped (unfinished_response)")
    code_only: bool = knob(False, "drop answers without a ```python block (else kept: general requests teach chat too)")

    def check(self):
        require_paths(out=self.out)
        if self.n < 1 or self.min_instruction_words < 0:
            raise UserError("--n must be >= 1 and --min-instruction-words >= 0")
        check_sampling(self.instruction_temperature, self.instruction_top_p, self.max_instruction_tokens)
        check_sampling(self.temperature, 1.0, self.max_new_tokens)


def check_sampling(temperature: float, top_p: float, max_new_tokens: int):
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise UserError("temperatures must be >= 0 (0: greedy), top-p in (0, 1] and token limits >= 1")


def require_paths(**paths: str):
    missing = [name for name, value in paths.items() if not value]
    if missing:
        raise UserError(f"{' and '.join('--' + name for name in missing)} {'is' if len(missing) == 1 else 'are'} "
                        "required")
