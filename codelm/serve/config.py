"""Settings of `codelm serve`: the only home of their defaults, which the CLI shows.

Kept apart from the server, with no heavy imports, so that `codelm` builds its
parser from these fields without importing torch or FastAPI.
"""

from dataclasses import dataclass, field

from codelm.config import EngineConfig, knob
from codelm.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeConfig:
    checkpoint: str = knob("", "checkpoint directory or run directory")
    host: str = knob("127.0.0.1", "address to bind; anything but loopback exposes the model (then set api_key)")
    port: int = knob(8000, "TCP port")
    api_key: str = knob("", "when set, every API route wants `Authorization: Bearer KEY`")
    model_name: str = knob("", "the name /v1/models lists ('': the checkpoint directory's name)")
    engine: EngineConfig = field(default_factory=EngineConfig)
    max_seqs: int = knob(16, "sequences decoding together (1: one request at a time, no continuous batching)")
    max_queue: int = knob(64, "waiting sequences before new requests get 429")
    step_tokens: int = knob(256, "tokens per scheduler step: one per decoding sequence, the rest prefill chunks")
    block_size: int = knob(16, "tokens per KV-cache block, the unit of prefix sharing")
    cache_tokens: int = knob(0, "KV-cache capacity in tokens (0: max_seqs full contexts)")
    prefix_caching: bool = knob(True, "reuse cached blocks of a prompt's prefix")
    max_n: int = knob(16, "completions per request at most")
    max_stops: int = knob(8, "stop strings per request at most")

    def check(self):
        if not self.checkpoint:
            raise UserError("--checkpoint is required")
        if min(self.max_seqs, self.max_queue, self.step_tokens, self.block_size, self.max_n) < 1:
            raise UserError("--max-seqs, --max-queue, --step-tokens, --block-size and --max-n must be >= 1")
        if self.cache_tokens < 0 or self.max_stops < 0:
            raise UserError("--cache-tokens and --max-stops must be >= 0")
        if self.engine.compile:
            raise UserError("serve.engine.compile: the server's batched step is not compiled; leave it false")
        if not 0 < self.port < 65536:
            raise UserError(f"--port must be in 1..65535, got {self.port}")

    def exposed_without_key(self) -> bool:
        """Bound beyond this machine with nothing asked of clients: worth a warning."""
        return self.host not in LOOPBACK and not self.api_key
