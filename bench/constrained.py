"""Constrained decoding on SmolLM2-135M-Instruct: schema-valid output with and without the constraint, and what
the mask costs in decode speed.

    python bench/constrained.py [--out runs/bench-constrained] [--quantize none|int8] [--max-new-tokens 256]

1. Validity: 50 chat prompts of our own (10 JSON schemas with nested objects, arrays, enums and required
   fields, x 5 subjects), greedy. Unconstrained, the reply's JSON is taken from its first ```json fence or
   its first {...} span; constrained (response_format json_schema), the reply is the JSON. Both are checked
   with jsonschema.
2. Speed: decode tokens/s at batch 1 and 16 with no constraint and under a schema whose one string field
   lets the model write freely (the mask is computed every step, almost nothing is forced), min of 3 runs of
   --speed-tokens new tokens. Overhead = 1 - constrained / unconstrained.
Prints both tables and writes OUT/constrained.json (with the machine).
"""

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import jsonschema
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import smollm2_gguf  # noqa: E402

from codelm.chat import encode_chat  # noqa: E402
from codelm.config import SamplingParams  # noqa: E402
from codelm.inference.engine import Engine  # noqa: E402
from codelm.interop.gguf import import_gguf  # noqa: E402

NAME = {"type": "string", "maxLength": 40}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                      "email": NAME}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"title": NAME, "tags": {"type": "array", "items": NAME, "maxItems": 5},
                                      "status": {"enum": ["draft", "published", "archived"]}},
     "required": ["title", "tags", "status"], "additionalProperties": False},
    {"type": "object", "properties": {"city": NAME, "location": {
        "type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
        "required": ["lat", "lon"], "additionalProperties": False}}, "required": ["city", "location"],
     "additionalProperties": False},
    {"type": "object", "properties": {"function": NAME, "arguments": {"type": "array", "maxItems": 4, "items": {
        "type": "object", "properties": {"name": NAME, "type": {"enum": ["int", "str", "float", "bool"]}},
        "required": ["name", "type"], "additionalProperties": False}}, "returns": {"enum": ["int", "str", "None"]}},
     "required": ["function", "arguments", "returns"], "additionalProperties": False},
    {"type": "object", "properties": {"package": NAME, "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
                                      "dependencies": {"type": "array", "items": NAME, "maxItems": 6}},
     "required": ["package", "version", "dependencies"], "additionalProperties": False},
    {"type": "object", "properties": {"bug": NAME, "severity": {"enum": ["low", "medium", "high", "critical"]},
                                      "steps": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 5},
                                      "fixed": {"type": "boolean"}},
     "required": ["bug", "severity", "steps", "fixed"], "additionalProperties": False},
    {"type": "object", "properties": {"order_id": {"type": "integer"}, "items": {"type": "array", "maxItems": 4,
                                                                               "items": {
        "type": "object", "properties": {"sku": NAME, "quantity": {"type": "integer", "minimum": 1}},
        "required": ["sku", "quantity"], "additionalProperties": False}}, "total": {"type": "number"}},
     "required": ["order_id", "items", "total"], "additionalProperties": False},
    {"type": "object", "properties": {"language": {"enum": ["python", "javascript", "go", "rust"]},
                                      "snippet": {"type": "string", "maxLength": 120},
                                      "lines": {"type": "integer", "minimum": 1}},
     "required": ["language", "snippet", "lines"], "additionalProperties": False},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {"id": {"type": "integer"},
                                                                                "name": NAME},
                                               "required": ["id", "name"], "additionalProperties": False},
                                      "roles": {"type": "array", "items": {"enum": ["admin", "editor", "viewer"]},
                                                "maxItems": 3}},
     "required": ["user", "roles"], "additionalProperties": False},
    {"type": "object", "properties": {"test": NAME, "passed": {"type": "boolean"},
                                      "duration_ms": {"type": "number", "minimum": 0}, "error": NAME},
     "required": ["test", "passed", "duration_ms"], "additionalProperties": False},
]
SUBJECTS = ["a small Python web service", "a command-line tool for renaming files", "a data pipeline that reads CSV",
            "a unit test suite for a parser", "a weather app for a phone"]
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def prompts() -> list[tuple[str, dict]]:
    return [(f"Write one JSON object about {subject} that follows this JSON schema:\n{json.dumps(schema)}\n"
             "Answer with the JSON only.", schema) for schema in SCHEMAS for subject in SUBJECTS]


def extract(reply: str):
    """The JSON a free reply holds: its first fenced block, else its first {...} span; None if none parses."""
    fenced = FENCE.search(reply)
    text = fenced.group(1) if fenced else reply[reply.find("{"):reply.rfind("}") + 1]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def valid(value, schema) -> bool:
    try:
        jsonschema.validate(value, schema)
        return True
    except jsonschema.ValidationError:
        return False


def validity(engine: Engine, max_new_tokens: int) -> dict:
    template = engine.tok.chat_template
    out = {"free": 0, "free_parses": 0, "constrained": 0, "constrained_parses": 0, "n": 0}
    params = SamplingParams(max_new_tokens=max_new_tokens)
    for i, (text, schema) in enumerate(prompts()):
        ids = encode_chat(engine.tok, [{"role": "user", "content": text}], template)
        [[free]] = engine.generate([ids], params)
        value = extract(free.text)
        out["free_parses"] += value is not None
        out["free"] += value is not None and valid(value, schema)
        [[held]] = engine.generate([ids], params, grammar=engine.constraint("json_schema", schema))
        try:
            value = json.loads(held.text)
            out["constrained_parses"] += 1
            out["constrained"] += valid(value, schema)
        except json.JSONDecodeError:
            print(f"  prompt {i}: constrained reply cut before its end ({held.finish_reason})")
        out["n"] += 1
        print(f"  {i + 1}/50: free {out['free']}, constrained {out['constrained']}", flush=True)
    return out


def speed(engine: Engine, batch: int, tokens: int, constrained: bool) -> float:
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    grammar = engine.constraint("json_schema", schema) if constrained else None
    ids = encode_chat(engine.tok, [{"role": "user", "content": "Tell a long story about a compiler, as JSON."}],
                      engine.tok.chat_template)
    params = SamplingParams(strategy="sample", temperature=0.8, max_new_tokens=tokens, seed=0)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        outs = engine.generate([ids] * batch, params, grammar=grammar)
        seconds = time.perf_counter() - start
        made = sum(len(c.token_ids) for row in outs for c in row)
        best = min(best, seconds / made)
    return 1 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-constrained")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"])
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--speed-tokens", type=int, default=64)
    parser.add_argument("--skip-validity", action="store_true")
    parser.add_argument("--skip-speed", action="store_true", help="the speed table needs a quiet machine")
    args = parser.parse_args()
    out = Path(args.out)
    ckpt = out / "smollm2-135m-instruct"
    if not (ckpt / "model.safetensors").is_file():
        import_gguf(smollm2_gguf(), ckpt)
    engine = Engine.from_checkpoint(ckpt, dtype="fp32", quantize=None if args.quantize == "none" else "int8")
    report = {"machine": platform.processor() or platform.machine(), "cpu": cpu_model(), "precision": "fp32",
              "quantize": args.quantize, "torch_threads": torch.get_num_threads()}
    if not args.skip_validity:
        report["validity"] = validity(engine, args.max_new_tokens)
        v = report["validity"]
        print(f"\n| decoding | JSON found | schema-valid |\n|---|---:|---:|\n| unconstrained | {v['free_parses']}/50 | "
              f"{v['free']}/50 |\n| constrained | {v['constrained_parses']}/50 | {v['constrained']}/50 |")
    rows = []
    for batch in () if args.skip_speed else (1, 16):
        free = speed(engine, batch, args.speed_tokens, False)
        held = speed(engine, batch, args.speed_tokens, True)
        rows.append({"batch": batch, "free": free, "constrained": held, "overhead": 1 - held / free})
    report["speed"] = rows
    if rows:
        print("\n| batch | unconstrained tok/s | constrained tok/s | overhead |\n|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['batch']} | {r['free']:.1f} | {r['constrained']:.1f} | {r['overhead']:.1%} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "constrained.json").write_text(json.dumps(report, indent=2))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
