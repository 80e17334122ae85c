"""The test hub speaks enough of the Hub protocol for the installed huggingface_hub: push, pull, auth, failures."""

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

# Registers the `hub` fixture. Importing it (`from hub_server import hub`, with a noqa for F401) works as well, but
# then ruff also flags every test taking a `hub` argument (F811, redefinition of an unused import).
pytest_plugins = ["hub_server"]

WEIGHTS = os.urandom(1 << 20)  # big enough that a real Hub would want LFS/xet: here it must stay a regular file

DOWNLOAD = """
import json, sys
from huggingface_hub import hf_hub_download, snapshot_download
print(json.dumps({"weights": hf_hub_download(sys.argv[1], "weights.bin"), "folder": snapshot_download(sys.argv[1])}))
"""

FROM_CACHE = """
import sys
from huggingface_hub import hf_hub_download, snapshot_download
print(hf_hub_download(sys.argv[1], "config.json"))
print(snapshot_download(sys.argv[1]))
"""


def api(hub, user: str | None = "alice") -> HfApi:
    """A client for `user` (None: anonymous); the endpoint must be explicit in-process (see hub_server)."""
    return HfApi(endpoint=hub.endpoint, token=hub.token(user) if user else False)


def model_folder(tmp_path):
    """A small checkpoint-like folder: text files, a nested one, and a 1 MB binary."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"n_layer": 2}))
    (folder / "sub" / "notes.txt").write_text("nested\n")
    (folder / "weights.bin").write_bytes(WEIGHTS)
    return folder


def pushed(hub, tmp_path, private: bool = False) -> str:
    """alice/tiny with the model folder committed; returns the commit sha."""
    alice = api(hub)
    alice.create_repo("alice/tiny", private=private)
    return alice.upload_folder(repo_id="alice/tiny", folder_path=model_folder(tmp_path)).oid


def python(script: str, env: dict, *args: str) -> str:
    """Run `script` in a fresh interpreter, so that huggingface_hub reads HF_ENDPOINT / HF_HOME at import."""
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_repo_and_upload_folder(hub, tmp_path):
    """Repos are created once; an upload is one regular commit, with no LFS or xet traffic."""
    alice = api(hub)
    url = alice.create_repo("alice/tiny")
    assert url.repo_id == "alice/tiny" and url.startswith(hub.endpoint)
    assert alice.create_repo("alice/tiny", exist_ok=True).repo_id == "alice/tiny"
    with pytest.raises(HfHubHTTPError) as conflict:
        alice.create_repo("alice/tiny")
    assert conflict.value.response.status_code == 409

    sha = alice.upload_folder(repo_id="alice/tiny", folder_path=model_folder(tmp_path), commit_message="add").oid
    assert len(sha) == 40 and int(sha, 16) >= 0
    assert hub.read("alice/tiny", "weights.bin") == WEIGHTS
    assert not [r for r in hub.requests if "lfs" in r or "xet" in r]

    info = alice.model_info("alice/tiny")
    assert (info.sha, info.private) == (sha, False)
    expected = {".gitattributes", "config.json", "sub/notes.txt", "weights.bin"}
    assert {s.rfilename for s in info.siblings} == expected
    assert set(alice.list_repo_files("alice/tiny")) == expected
    assert [f.path for f in alice.list_repo_tree("alice/tiny", path_in_repo="sub")] == ["sub/notes.txt"]
    assert alice.whoami()["name"] == "alice"


def test_download_then_load_offline_from_cache(hub, tmp_path):
    """hf_hub_download and snapshot_download work against the hub, and their cache then serves HF_HUB_OFFLINE=1."""
    sha = pushed(hub, tmp_path, private=True)
    home = tmp_path / "hf_home"
    paths = json.loads(python(DOWNLOAD, hub.env(home, "alice"), "alice/tiny"))
    assert open(paths["weights"], "rb").read() == WEIGHTS
    assert paths["folder"].endswith(sha)
    assert sorted(os.listdir(paths["folder"])) == [".gitattributes", "config.json", "sub", "weights.bin"]

    seen = len(hub.requests)
    config, folder = python(FROM_CACHE, hub.env(home, offline=True), "alice/tiny").split()
    assert json.loads(open(config).read()) == {"n_layer": 2} and folder == paths["folder"]
    assert len(hub.requests) == seen  # the offline run never reached the server


def test_writes_outside_ones_namespace_are_forbidden(hub, tmp_path):
    """bob may read alice's public repo but neither create nor commit in her namespace."""
    sha = pushed(hub, tmp_path)
    bob = api(hub, "bob")
    for write in (
        lambda: bob.create_repo("alice/other"),
        lambda: bob.upload_folder(repo_id="alice/tiny", folder_path=tmp_path / "model"),
    ):
        with pytest.raises(HfHubHTTPError) as forbidden:
            write()
        assert forbidden.value.response.status_code == 403
    assert bob.model_info("alice/tiny").sha == sha


def test_private_repos_are_invisible_to_others(hub, tmp_path):
    """A private repo is a 404 (RepositoryNotFoundError) for bob and for anonymous users, not a 403."""
    pushed(hub, tmp_path, private=True)
    assert api(hub).model_info("alice/tiny").private is True
    for user in ("bob", None):
        with pytest.raises(RepositoryNotFoundError):
            api(hub, user).model_info("alice/tiny")


def test_missing_file_repo_and_branch(hub, tmp_path):
    """Each kind of 404 carries the X-Error-Code the client turns into its own exception."""
    pushed(hub, tmp_path)
    download = dict(endpoint=hub.endpoint, token=hub.token("alice"), cache_dir=tmp_path / "cache")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("alice/tiny", "missing.txt", **download)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("alice/nope", "config.json", **download)
    with pytest.raises(RevisionNotFoundError):
        api(hub).upload_folder(repo_id="alice/tiny", folder_path=tmp_path / "model", revision="dev")


def test_commit_to_a_branch(hub, tmp_path):
    """A branch made with create_branch takes commits without moving main."""
    main = pushed(hub, tmp_path)
    alice = api(hub)
    alice.create_branch("alice/tiny", branch="dev")
    (tmp_path / "model" / "config.json").write_text(json.dumps({"n_layer": 4}))
    dev = alice.upload_folder(repo_id="alice/tiny", folder_path=tmp_path / "model", revision="dev").oid
    assert alice.model_info("alice/tiny").sha == main
    assert alice.model_info("alice/tiny", revision="dev").sha == dev != main
    assert json.loads(hub.read("alice/tiny", "config.json", revision="dev")) == {"n_layer": 4}
    assert ["POST /api/models/alice/tiny/commit/dev"] == [r for r in hub.requests if "/commit/dev" in r]


def test_dropped_commit_fails_the_upload(hub, tmp_path):
    """A connection lost during the commit raises, leaves the repo as it was, and a retry then succeeds."""
    alice = api(hub)
    alice.create_repo("alice/tiny")
    before = alice.model_info("alice/tiny").sha
    hub.fail_next_commit = True
    # The client's own transport error (httpx2 in huggingface_hub 2.x, httpx before): matched by name.
    with pytest.raises(Exception, match="disconnected") as raised:
        alice.upload_folder(repo_id="alice/tiny", folder_path=model_folder(tmp_path))
    assert type(raised.value).__name__ == "RemoteProtocolError"
    assert alice.model_info("alice/tiny").sha == before
    assert alice.upload_folder(repo_id="alice/tiny", folder_path=tmp_path / "model").oid != before


def test_xet_pipeline_retries_a_dropped_commit(hub, tmp_path, monkeypatch):
    """Why the fixture disables xet: with hf_xet on, upload_folder retries the commit, hiding the failure."""
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    api(hub).create_repo("alice/tiny")
    hub.fail_next_commit = True
    api(hub).upload_folder(repo_id="alice/tiny", folder_path=model_folder(tmp_path))
    assert len([r for r in hub.requests if "/commit/" in r]) == 2
    assert hub.read("alice/tiny", "weights.bin") == WEIGHTS
    assert not [r for r in hub.requests if "lfs" in r or "xet" in r]
