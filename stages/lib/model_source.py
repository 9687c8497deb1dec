"""Where `model.name` points: a .gguf file (converted once), a local directory, or a hub id pinned
by `model.revision`; and how an adapter names its base so that any checkout finds it again."""
import functools
from pathlib import Path

from .errors import PipelineError
from .gguf_conversion import converted_gguf, file_sha256, find_gguf


def source(params):
    """(what from_pretrained loads, extra kwargs) for `model.*` params."""
    name = params.name
    if name.endswith(".gguf"):
        return str(converted_gguf(find_gguf(name))), {}
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser()), {}
    # A path whose first folder exists here (models/SmolLM2-135M) is a missing directory, not a hub id.
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name.split("/", 1)[0]).is_dir():
        raise PipelineError(f"params.yaml: model.name: no such directory {name!r}, and not a hub id")
    require_hub(name, params.revision)
    return name, {"revision": params.revision, "trust_remote_code": params.trust_remote_code}


@functools.lru_cache
def require_hub(name, revision):
    """Fail in seconds, not after minutes of retries, when a hub model is neither cached nor reachable."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str):
        return  # offline mode fails fast by itself; a cached model needs no network
    if not hub_reachable():
        raise PipelineError(f"params.yaml: model.name: {name!r} is not in the Hugging Face cache and the hub "
                            "cannot be reached; offline, use a local directory or a .gguf file (README: Offline)")


def hub_reachable(timeout=3.0):
    """Whether a TCP connection to the hub opens within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def base_model_reference(params):
    """The base model as a colleague's checkout finds it: `model.name` as written (never a cache path),
    its revision, and the sha256 of a GGUF file."""
    reference = {"name": params.name, "revision": params.revision}
    if params.name.endswith(".gguf"):
        reference["gguf_sha256"] = file_sha256(find_gguf(params.name))
    return reference
