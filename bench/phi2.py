"""What the phi-2-shape benchmarks share: a random-weight phi-2 saved once, and real SNLI rows.

Random weights cost the same as the real model's; the tokenizer is the embedded SmolLM2 one (a
smaller vocabulary than phi-2's 51,200, so every id fits). The model directory loads through the
pipeline's own `load_quantized`, so the benchmarks time the stages' code, not a copy of it.
"""
import argparse
import json
from pathlib import Path

import torch

from stages.lib import distributed, params
from stages.lib.model import load_tokenizer
from stages.lib.snli import read_rows

PHI2_SHAPE = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                  partial_rotary_factor=0.4, vocab_size=51200)
PEAK_BF16_FLOPS = 790e12  # H200 dense bf16 matrix ceiling


def random_phi2(directory, layers=PHI2_SHAPE["num_hidden_layers"]):
    """ModelParams for a random-weight phi-2 saved under `directory` (made once; fewer layers: smoke tests)."""
    directory = Path(directory) / f"layers{layers}"
    if not (directory / "config.json").is_file():
        from transformers import AutoModelForCausalLM, PhiConfig

        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            config = PhiConfig(**PHI2_SHAPE | {"num_hidden_layers": layers})
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(directory)
        load_tokenizer(params.load("model")).save_pretrained(directory)
        del model
    return params.load("model", name=str(directory))


def arguments(doc):
    """The options both benchmarks take; each adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--snli", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model-dir", default="/tmp/phi2-random")
    parser.add_argument("--layers", type=int, default=32, help="fewer: a quick smoke test, not phi-2's cost")
    parser.add_argument("--model", help="a model.name to time instead of the random phi-2 (e.g. the embedded default)")
    return parser


def model_tag(args):
    return "phi2" if args.model is None else "model"


def model_label(args):
    return "phi-2 shape (random weights)" if args.model is None else args.model


def shared_model(args):
    """The main process makes the model, then every process has it (inside `distributed.session()`)."""
    if args.model is not None:
        return params.load("model", name=args.model)
    if distributed.is_main():
        random_phi2(args.model_dir, args.layers)
    if distributed.world_size() > 1:
        torch.distributed.barrier()
    return random_phi2(args.model_dir, args.layers)


def snli_rows(snli_dir, split, n):
    return [r for r in read_rows(Path(snli_dir) / f"{split}.jsonl.gz") if r["label"] != -1][:n]


def gpu_name():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def write_result(out_dir, name, result, table):
    """OUT/<name>.json and a Markdown table (printed and saved beside it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in table[1:]]
    (out_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
