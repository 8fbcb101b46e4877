"""Generation: `Engine` (KV cache, batching, beam search), `SamplingParams`, speculative decoding."""

from codelm.inference.engine import Completion, Engine
from codelm.inference.sampling import SamplingParams

__all__ = ["Completion", "Engine", "SamplingParams"]
