"""Generation: `Engine` (KV cache, batching, beam search), `SamplingParams`, speculative decoding."""

from codelm.config import SamplingParams
from codelm.inference.engine import Completion, Engine

__all__ = ["Completion", "Engine", "SamplingParams"]
