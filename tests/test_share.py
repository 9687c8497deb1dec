"""Share and compare: push to a real remote, reproduce from a fresh clone, compare experiments."""
import socket
import subprocess
import sys
import time

import pytest

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


@pytest.fixture(scope="module")
def webdav(tmp_path_factory):
    root, port = tmp_path_factory.mktemp("davroot"), free_port()
    server = subprocess.Popen([sys.executable, "tests/webdav_server.py", str(root), str(port), "alice", "s3cret"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "the WebDAV server did not start"
            time.sleep(0.2)
    yield f"webdav://127.0.0.1:{port}/", root
    server.terminate()
    server.wait()


def use_remote(repo, name, url, **options):
    dvc("remote", "add", "-f", "-d", name, url, cwd=repo)
    for key, value in options.items():  # credentials stay in .dvc/config.local, never in git
        dvc("remote", "modify", "--local", name, key, value, cwd=repo)


def clone_and_pull(repo, target, name, url, **options):
    run(["git", "clone", "-q", str(repo), str(target)], repo.parent)
    use_remote(target, name, url, **options)
    dvc("pull", cwd=target)
    assert "up to date" in dvc("status", cwd=target)
    assert "Running stage" not in dvc("repro", cwd=target)
    for path in SHARED:
        assert (target / path).read_bytes() == (repo / path).read_bytes(), path


def test_local_remote_push_clone_pull_reproduces_nothing(project, tmp_path):
    use_remote(project, "local", str(tmp_path / "remote"))
    dvc("push", cwd=project)
    clone_and_pull(project, tmp_path / "clone", "local", str(tmp_path / "remote"))


def test_webdav_remote_with_a_real_server(project, webdav, tmp_path):
    server, root = webdav
    (root / "nli-qlora").mkdir()  # as the README says: the remote's folder is made first, on the server
    url = server + "nli-qlora"
    use_remote(project, "dav", url, user="alice", password="s3cret")
    dvc("push", cwd=project)
    assert any((root / "nli-qlora").rglob("*")), "nothing reached the server's folder"
    clone_and_pull(project, tmp_path / "clone", "dav", url, user="alice", password="s3cret")


@pytest.mark.parametrize("case", ["wrong password", "nothing listening"])
def test_a_refused_or_unreachable_remote_fails_clearly_and_keeps_outputs(project, webdav, case):
    url = webdav[0] if case == "wrong password" else f"webdav://127.0.0.1:{free_port()}/"
    use_remote(project, "bad", url, user="alice", password="wrong")
    before = {p: (project / p).read_bytes() for p in SHARED}
    done = subprocess.run([sys.executable, "-m", "dvc", "push", "-r", "bad"], cwd=project,
                          capture_output=True, text=True)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    expected = "401 (Not Authorized)" if case == "wrong password" else "Connection refused"
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert {p: (project / p).read_bytes() for p in SHARED} == before
    assert "up to date" in dvc("status", cwd=project)


def test_experiments_show_accuracy_time_memory_and_params(project):
    dvc("exp", "run", "-S", "lora.r=8", "-n", "r8", cwd=project)
    lines = dvc("exp", "show", "--csv", cwd=project).splitlines()
    header = lines[0].split(",")
    for column in ("accuracy", "train_seconds", "memory.cpu_peak_rss_gib", "params.trainable", "lora.r"):
        assert any(h.endswith(column) for h in header), column
    assert any(line.startswith("r8,") for line in lines)
