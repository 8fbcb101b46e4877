"""`codelm import` and `codelm export`: other formats in and out (codelm.interop)."""

from codelm.cli.options import add_command


def import_(sub, name, text):
    parser = add_command(sub, name, text, (
        "hf DIR: config.json + safetensors + tokenizer.json (Llama architecture, GQA, tied embeddings). gguf FILE: "
        "llama-architecture GGUF, dequantized to fp32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, K-quants), with its "
        "embedded byte-level BPE tokenizer."), run_import)
    parser.add_argument("format", choices=["hf", "gguf"])
    parser.add_argument("source", help="HF model directory or .gguf file")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")


def run_import(args):
    if args.format == "hf":
        from codelm.interop.hf import import_hf as importer
    else:
        from codelm.interop.gguf import import_gguf as importer
    print(f"imported {args.source} -> {importer(args.source, args.out)}")


def export(sub, name, text):
    parser = add_command(sub, name, text, (
        "Write an HF folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json, "
        "generation_config.json) that AutoModelForCausalLM and AutoTokenizer load with no conversion code. A LoRA "
        "adapter checkpoint exports as its base model plus the adapter in PEFT's format in OUT/adapter/, or merged "
        "with --merge-lora."), run_export)
    parser.add_argument("format", choices=["hf"])
    parser.add_argument("--checkpoint", required=True, help="checkpoint, adapter or run directory")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--merge-lora", action="store_true",
                        help="fold a LoRA adapter into the weights (in fp32) and write a plain model")


def run_export(args):
    from codelm.interop.hf import export_hf

    out = export_hf(args.checkpoint, args.out, merge_lora=args.merge_lora)
    lora = "; its LoRA adapter in adapter/ with peft's PeftModel.from_pretrained" if (out / "adapter").is_dir() else ""
    print(f"exported {args.checkpoint} -> {out} "
          f"(load with transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained{lora})")
