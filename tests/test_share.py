"""Share and compare: push to a real remote, reproduce from a fresh clone, compare experiments."""
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.project import copy_of, dvc, git, run

SHARED = ["models/adapter/adapter_model.safetensors", "data/predictions/base.csv", "data/predictions/adapted.csv",
          "reports/report.md", "data/prepared/train.jsonl"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_run):
    repo = copy_of(tiny_run[0], tmp_path_factory.mktemp("share") / "project")
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "tiny run", cwd=repo)
    return repo


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(script, *args):
    """A test server (a script in tests/, listening on 127.0.0.1:PORT) while the block runs; yields PORT."""
    port = free_port()
    process = subprocess.Popen([sys.executable, f"tests/{script}", *map(str, args[:1]), str(port), *map(str, args[1:])],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, f"{script} did not start"
            time.sleep(0.2)
    try:
        yield port
    finally:
        process.terminate()
        process.wait()


@pytest.fixture(scope="module")
def webdav(tmp_path_factory):
    root = tmp_path_factory.mktemp("davroot")
    with server("webdav_server.py", root, "alice", "s3cret") as port:
        yield f"webdav://127.0.0.1:{port}/", root


@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    """(port, SFTP root, an authorized private key file, an unknown one)."""
    import asyncssh

    keys = tmp_path_factory.mktemp("keys")
    for name in ("team", "stranger"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(keys / name)
        key.write_public_key(keys / f"{name}.pub")
    root = tmp_path_factory.mktemp("sshroot")
    with server("ssh_server.py", root, keys / "team.pub") as port:
        yield port, root, keys / "team", keys / "stranger"


def make(repo, *targets, check=True, **env):
    """`make TARGET ...` as the README gives it, with this interpreter's environment, NLI_QLORA_REMOTE_* set."""
    venv = Path(sys.prefix)
    variables = {f"NLI_QLORA_REMOTE_{k.upper()}": str(v) for k, v in env.items()}
    done = subprocess.run(["make", "-s", "-o", f"{venv}/.installed", f"VENV={venv}", *targets], cwd=repo,
                          capture_output=True, text=True, env=os.environ | variables)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def push_clone_pull(repo, target, url, **credentials):
    """Set the remote up and push, then a colleague's clone sets it up and pulls: nothing to re-run."""
    make(repo, "remote", f"REMOTE_URL={url}", **credentials)
    make(repo, "push")
    run(["git", "clone", "-q", str(repo), str(target)], repo.parent)
    make(target, "remote", f"REMOTE_URL={url}", **credentials)
    make(target, "pull")
    assert "up to date" in dvc("status", cwd=target)
    assert "Running stage" not in dvc("repro", cwd=target)
    for path in SHARED:
        assert (target / path).read_bytes() == (repo / path).read_bytes(), path


def test_local_remote_push_clone_pull_reproduces_nothing(project, tmp_path):
    push_clone_pull(project, tmp_path / "clone", str(tmp_path / "remote"))


def test_webdav_remote_in_a_folder_the_setup_creates(project, webdav, tmp_path):
    server_url, root = webdav
    push_clone_pull(project, tmp_path / "clone", server_url + "teams/nli-qlora", user="alice", password="s3cret")
    assert any((root / "teams/nli-qlora").rglob("*")), "nothing reached the server's folder"


def test_ssh_remote_with_a_generated_key(project, ssh, tmp_path):
    port, root, key, _ = ssh
    push_clone_pull(project, tmp_path / "clone", f"ssh://127.0.0.1:{port}/cache/nli-qlora", user="alice", keyfile=key)
    assert any((root / "cache/nli-qlora").rglob("*")), "nothing reached the server's folder"


def failed_setup(project, url, expected, **credentials):
    """A remote that fails its check: one line naming the remote, URL and cause; nothing changed."""
    before = {p: (project / p).read_bytes() for p in SHARED}
    local = project / ".dvc/config.local"
    config = local.read_bytes() if local.is_file() else None
    done = make(project, "remote", f"REMOTE_URL={url}", "REMOTE_NAME=bad", check=False, **credentials)
    lines = [line for line in done.stderr.strip().splitlines() if not re.match(r"make(\[\d+\])?: \*\*\*", line)]
    assert done.returncode != 0 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: remote 'bad' ({url}): ") and expected in lines[0], lines[0]
    assert {p: (project / p).read_bytes() for p in SHARED} == before
    assert (local.read_bytes() if local.is_file() else None) == config  # the failed remote is not left set up
    assert "up to date" in dvc("status", cwd=project)


@pytest.mark.parametrize("case", ["wrong password", "nothing listening"])
def test_a_refused_or_unreachable_webdav_remote_fails_clearly_and_keeps_outputs(project, webdav, case):
    url = webdav[0] + "nli-qlora" if case == "wrong password" else f"webdav://127.0.0.1:{free_port()}/nli-qlora"
    expected = "refused the credentials" if case == "wrong password" else "nothing listens at that host and port"
    failed_setup(project, url, expected, user="alice", password="wrong")


@pytest.mark.parametrize("case", ["unknown key", "nothing listening"])
def test_a_refused_or_unreachable_ssh_remote_fails_clearly_and_keeps_outputs(project, ssh, case):
    port, _, _, stranger = ssh
    port = port if case == "unknown key" else free_port()
    expected = "refused the credentials" if case == "unknown key" else "nothing listens at that host and port"
    failed_setup(project, f"ssh://127.0.0.1:{port}/cache", expected, user="alice", keyfile=stranger)


def readme_commands(section):
    """The `dvc` command lines of a README section, comments cut, `\\` continuations joined, `&&` split."""
    text = (ROOT / "README.md").read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    commands, continued = [], False
    for line in text.splitlines():
        code = line[4:].split("  #", 1)[0].strip()
        if continued:
            commands[-1] += " " + code.rstrip("\\").strip()
        elif line.startswith("    dvc "):
            commands.append(code.rstrip("\\").strip())
        continued = code.endswith("\\")
    return [part.strip() for command in commands for part in command.split("&&")]


def test_a_port_in_an_error_is_not_read_as_an_http_status():
    from stages.share import likely_cause

    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 44401)")
    assert likely_cause(refused).startswith("nothing listens at that host and port")
    assert likely_cause(OSError("401 Client Error: Unauthorized")).startswith("the server refused the credentials")


def test_the_readme_compare_commands_as_written(project):
    """Every command of README's "Compare runs", run as a user types it (dvc on PATH, as after activating
    .venv). The sweep is queued and listed but not started: running it is `dvc exp run` again, twice."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    outputs = {}
    for command in readme_commands("Compare runs"):
        if command == "dvc queue start":
            continue
        outputs[command] = run(["bash", "-c", command], project, env=os.environ | {"PATH": path, "COLUMNS": "120"})
    assert len(outputs) == 6, list(outputs)
    queued = dvc("queue", "status", cwd=project)
    assert queued.count("Queued") == 2, queued
    dvc("queue", "remove", "--all", cwd=project)
    shown = next(out for command, out in outputs.items() if command.startswith("dvc exp show --drop"))
    assert max(map(len, shown.splitlines())) <= 120, shown
    for column in ("accuracy", "train_seconds", "train.lr"):
        assert column in shown, column
    assert len([line for line in shown.splitlines() if "lora.r" in line or "0.001" in line]) >= 1, shown
    diff = next(out for command, out in outputs.items() if command.startswith("dvc metrics diff"))
    assert max(map(len, diff.splitlines())) <= 120, diff
    assert (project / "plots_diff/index.html").is_file()
    everything = dvc("exp", "show", "--csv", cwd=project).splitlines()
    header = everything[0].split(",")
    for column in ("accuracy", "train_seconds", "memory.cpu_peak_rss_gib", "params.trainable", "lora.r"):
        assert any(h.endswith(column) for h in header), column
