"""A team's DVC remote: set it up, check it by a round trip, push and pull through it.

    python -m stages.share setup URL [--name team]   # make remote REMOTE_URL=URL
    python -m stages.share check|push|pull            # make push / make pull check first

`setup` writes the remote and its credentials to .dvc/config.local, which git ignores: the URL and
credentials come from the command line and the environment (NLI_QLORA_REMOTE_USER,
NLI_QLORA_REMOTE_PASSWORD, NLI_QLORA_REMOTE_KEYFILE for an SSH key), never from git. It creates the
remote's folder (WebDAV servers refuse to write into a missing one) and checks the remote by writing,
reading back and deleting a small file. Every failure is one line naming the remote, its URL and
the likely cause; push and pull run `dvc push` / `dvc pull` only once that check passed.
"""
import argparse
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

from stages.lib.errors import PipelineError, cli, first_line, run_as_program

CREDENTIALS = {"user": "NLI_QLORA_REMOTE_USER", "password": "NLI_QLORA_REMOTE_PASSWORD",
               "keyfile": "NLI_QLORA_REMOTE_KEYFILE"}
# (what the error says, the likely cause), first match wins; the text is searched lower-cased, and a
# number matches only as a whole number (a port such as 44401 is not a 401).
CAUSES = [
    (("401", "403", "permission denied", "authentication", "not authorized", "unauthorized"),
     "the server refused the credentials: check user, password or key (NLI_QLORA_REMOTE_* and make remote, "
     "or dvc remote modify --local)"),
    (("connection refused", "errno 111"), "nothing listens at that host and port: is the server running?"),
    (("name or service not known", "nodename nor servname", "getaddrinfo", "temporary failure in name resolution"),
     "the host name does not resolve: check the URL, or the network"),
    (("timed out", "timeout"), "no answer from the host: a firewall, a VPN, or no network"),
    (("404", "409", "no such file", "not found"), "the remote's parent folder does not exist on the server"),
    (("no module named", "install"), "the remote's DVC plugin is missing: pip install dvc-ssh, dvc-s3, ..."),
]


def likely_cause(err):
    text = f"{type(err).__name__}: {err}".lower()
    found = next((cause for needles, cause in CAUSES
                  if any(re.search(rf"(?<!\d){re.escape(n)}(?!\d)", text) for n in needles)), None)
    return f"{found} ({first_line(err)})" if found else first_line(err)


def open_repo():
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Repo(".")
    except NotDvcRepoError as err:
        raise PipelineError("run this from the project's root (no .dvc folder here)") from err


def setup(name, url):
    """Write remote `name` at `url`, with credentials from the environment, as the default, locally;
    return the names of the credentials written."""
    repo = open_repo()
    with repo.config.edit("local") as local:
        remote = {"url": url}
        remote |= {key: os.environ[var] for key, var in CREDENTIALS.items() if os.environ.get(var)}
        local.setdefault("remote", {})[name] = remote
        local.setdefault("core", {})["remote"] = name
    return ", ".join(sorted(set(remote) - {"url"})) or "none"


def make_folder(repo, name, remote):
    """The remote's folder and its parents. A WebDAV file system is rooted at the URL's own folder (its
    path is ''), so its folders are made from the server's root."""
    if remote.path:
        remote.fs.makedirs(remote.path, exist_ok=True)
        return
    from urllib.parse import urlsplit, urlunsplit

    from dvc.fs import get_cloud_fs

    settings = dict(repo.config["remote"][name])
    url = urlsplit(settings["url"])
    cls, config, _ = get_cloud_fs(repo.config, **settings | {"url": urlunsplit(url._replace(path="/"))})
    if url.path.strip("/"):
        cls(**config).makedirs(url.path.strip("/"), exist_ok=True)


def check(name=None):
    """Create the remote's folder, write a small file, read it back and delete it; return the name."""
    repo = open_repo()
    name = name or repo.config["core"].get("remote")
    if not name:
        raise PipelineError("no DVC remote is set up: make remote REMOTE_URL=... (README: Share results)")
    try:
        url = repo.config["remote"][name]["url"]
    except KeyError as err:
        raise PipelineError(f"no DVC remote named {name!r}: make remote REMOTE_URL=... REMOTE_NAME={name}") from err
    started = time.perf_counter()
    payload = secrets.token_bytes(64)
    try:
        remote = repo.cloud.get_remote(name)
        fs, probe = remote.fs, remote.fs.join(remote.path, f".nli-qlora-check-{secrets.token_hex(4)}")
        make_folder(repo, name, remote)
        fs.pipe_file(probe, payload)
        read_back = fs.cat_file(probe)
        fs.rm(probe)
    except Exception as err:  # each backend raises its own types: OSError, aiohttp's, asyncssh's, DVC's
        raise PipelineError(f"remote {name!r} ({url}): cannot write and read back a file: {likely_cause(err)}") \
            from err
    if read_back != payload:
        raise PipelineError(f"remote {name!r} ({url}): a file written there read back different")
    print(f"remote {name!r} ({url}): wrote, read back and deleted a file in {time.perf_counter() - started:.1f} s")
    return name


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("setup", "check", "push", "pull"))
    parser.add_argument("url", nargs="?", help="with setup: the remote's URL (a path, ssh://, webdav://, s3://)")
    parser.add_argument("--name", help="the remote's name (setup: team; otherwise the default remote)")
    args = parser.parse_args(argv)
    if args.action == "setup":
        if not args.url:
            raise PipelineError("make remote needs REMOTE_URL=... (a path, ssh://host/path, webdav://host/path, ...)")
        local = Path(".dvc/config.local")
        before = local.read_bytes() if local.is_file() else None
        credentials = setup(args.name or "team", args.url)
        try:
            name = check(args.name or "team")
        except PipelineError:  # a remote that fails its check is not left set up
            if before is None:
                local.unlink()
            else:
                local.write_bytes(before)
            raise
        print(f"remote {name!r} is the default now, in .dvc/config.local (credentials: {credentials})")
        return
    name = check(args.name)
    if args.action in ("push", "pull"):
        sys.exit(subprocess.run([sys.executable, "-m", "dvc", args.action, "-r", name]).returncode)


if __name__ == "__main__":
    run_as_program(main)
