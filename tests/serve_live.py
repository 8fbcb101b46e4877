"""A tiny random checkpoint served by a live uvicorn on loopback: the serve tests' server."""

import socket
import threading
import time
from pathlib import Path

import torch
import uvicorn

from codelm.checkpoint import save_model
from codelm.config import ModelConfig
from codelm.inference.engine import Engine
from codelm.model.llama import Transformer
from codelm.serve.api import create_app
from codelm.serve.config import ServeConfig
from codelm.serve.scheduler import Scheduler


def tiny_checkpoint(path: Path, tok, context: int = 256) -> Path:
    """Random weights: the text is noise, but every token is a real forward of a real model."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                    max_seq_len=context))
    return save_model(path, model, tok)


class LiveServer:
    """`codelm serve`'s app on a free loopback port, in a thread of the test process (so tests can look at the
    scheduler). Give it an fp64 engine: its greedy tokens then equal the engine's offline ones exactly."""

    def __init__(self, engine: Engine, **settings):
        self.engine = engine
        self.app = create_app(engine, ServeConfig(checkpoint="tiny", **settings))
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    @property
    def state(self):
        """The Server object: scheduler, block pool, metrics."""
        return self.app.state.server

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


def break_prompt(monkeypatch, prompt: list[int]):
    """Make the scheduler raise (an internal error) whenever it picks a token for this prompt's sequences."""
    choose = Scheduler._choose

    def flaky(self, seq, logits):
        if seq.request.prompt == prompt:
            raise RuntimeError("injected")
        return choose(self, seq, logits)

    monkeypatch.setattr(Scheduler, "_choose", flaky)
