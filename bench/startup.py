"""What a stage pays before its real work, each part in a fresh process: importing the stage,
converting the GGUF (empty cache), starting CUDA, loading the 4-bit model, and dvc itself.

    python -m bench.startup --out DIR [--repeat 3]     # medians; OUT/startup.json and startup.md
    python -m bench.startup --out DIR --part "import stages.finetune" --part "GGUF conversion"   # some parts

Run from the project root with the committed params.yaml (its model.name is what is loaded).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench.phi2 import gpu_name, write_result

CUDA_START = "import torch; torch.cuda.is_available() and torch.zeros(1, device='cuda')"
PARTS = {  # name: (code run by a fresh interpreter, what it measures)
    "import stages.prepare_data": ("import stages.prepare_data", "prepare_data"),
    "import stages.evaluate": ("import stages.evaluate", "evaluate_* (peft comes with an adapter)"),
    "import stages.finetune": ("import stages.finetune", "finetune (Trainer, peft)"),
    "import stages.control": ("import stages.control", "the control's stages while off"),
    "import stages.analyze": ("import stages.analyze", "analyze"),
    "python and torch": ("import torch", "the floor of every model stage"),
    "CUDA start": (CUDA_START, "first tensor on the GPU, torch imported"),
    # An idea not adopted (docs/benchmarks.md): it pays only on a host where CUDA's start is slow
    "CUDA start, then import stages.finetune": (f"{CUDA_START}; import stages.finetune", "the two one after the other"),
    "CUDA start beside import stages.finetune": (
        "import threading, torch; started = threading.Thread(target=lambda: torch.cuda.is_available() and "
        "torch.zeros(1, device='cuda')); started.start(); import stages.finetune; started.join()",
        "CUDA started on a thread while the main thread imports"),
    "GGUF conversion": ("from stages.lib import params; from stages.lib.model_source import source; "
                        "source(params.load('model'))", "once per machine; an empty cache each time here"),
    # runtime first, as the stages import it: bitsandbytes then comes without torch's compiler
    "4-bit model load": (f"{CUDA_START}; from stages.lib import params, runtime; from stages.lib.model import "
                         "load_quantized; load_quantized(params.load('model'))",
                         "CUDA start, imports and the converted model"),
    # a list: a command, not Python code (`dvc status` exits 1 when stages changed, so its status is not checked)
    "dvc --version": (["dvc", "--version"], "dvc's own start"),
    "dvc status": (["dvc", "status", "-q"], "dvc's own start"),
}
NEEDS_THE_CONVERTED_MODEL = {"4-bit model load"}


def seconds(command, env):
    """Wall seconds of `command` (a list), or of a Python snippet run by a fresh interpreter (a str,
    which must succeed)."""
    argv = [sys.executable, "-c", command] if isinstance(command, str) else command
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=isinstance(command, str), capture_output=True)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part", action="append", choices=PARTS, help="only these parts (default: all)")
    args = parser.parse_args()
    parts = {name: PARTS[name] for name in args.part or PARTS}
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        warm = dict(os.environ, NLI_QLORA_CACHE=os.path.join(scratch, "warm"))
        if NEEDS_THE_CONVERTED_MODEL & parts.keys():
            seconds(PARTS["GGUF conversion"][0], warm)
        for name, (code, what) in parts.items():
            cold = name == "GGUF conversion"
            runs = [seconds(code, dict(warm, NLI_QLORA_CACHE=os.path.join(scratch, f"cold{k}")) if cold else warm)
                    for k in range(args.repeat)]
            results[name] = {"median_s": statistics.median(runs), "runs_s": runs, "what": what}
    table = [["part", "median s", "what"]] + [[n, f"{r['median_s']:.2f}", r["what"]] for n, r in results.items()]
    write_result(args.out, "startup", {"device": gpu_name(), "repeat": args.repeat, "parts": results}, table)


if __name__ == "__main__":
    main()
