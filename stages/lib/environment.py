"""The installed versions of the packages that change results, against requirements.txt's pins.

A mismatch is not an error (a GPU box may have its own torch build), but results made with it may
differ: each stage that loads a model prints one warning line per mismatch and records them in its
metrics (`version_drift`).
"""
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REQUIREMENTS = Path("requirements.txt")
RESULT_CHANGING = ("torch", "transformers", "peft", "bitsandbytes", "gguf", "accelerate")


def pinned(requirements=REQUIREMENTS):
    """{package: version} for the result-changing packages pinned with == in requirements.txt."""
    pins = {}
    text = requirements.read_text() if requirements.is_file() else ""
    for match in re.finditer(r"^([A-Za-z0-9_.-]+)==([^\s#;]+)", text, re.MULTILINE):
        if match.group(1).lower() in RESULT_CHANGING:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def version_drift(stage, announce=True, requirements=REQUIREMENTS):
    """{package: {"pinned", "installed"}} for each mismatch, each printed as one warning line if `announce`."""
    drift = {}
    for name, pin in pinned(requirements).items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed.split("+", 1)[0] != pin:  # 2.13.0+cpu is the 2.13.0 release
            drift[name] = {"pinned": pin, "installed": installed}
            if announce:
                print(f"{stage}: warning: {name} {installed} is installed, requirements.txt pins {pin}: "
                      "results may differ from the committed ones", flush=True)
    return drift
