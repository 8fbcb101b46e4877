"""`codelm serve`: the OpenAI-compatible server (codelm.serve.api)."""

from codelm.cli.options import Settings, add_command, resolve, sections_root
from codelm.serve.config import ServeConfig

SETTINGS = Settings(sections_root("serve", serve=ServeConfig), ("serve",), every_field=True,
                    no_flag=("serve.engine.compile",))
DESCRIPTION = ("Serve a checkpoint: /v1/completions (suffix for fill-in-the-middle), /v1/chat/completions, "
               "/v1/models, llama.cpp's /infill, /health, /metrics (Prometheus), and a browser playground at /. "
               "Requests are batched continuously; prompts that share a prefix share their KV-cache blocks.")


def serve(sub, name, text):
    add_command(sub, name, text, DESCRIPTION, run, SETTINGS)


def run(args):
    from codelm.serve.api import serve as run_server

    run_server(resolve(args).serve)
