"""A minimal Hugging Face Hub for tests: the HTTP protocol of the installed huggingface_hub, standard library only.

Why: pushing and pulling (`upload_folder`, `hf_hub_download`, `from_pretrained("alice/name")`) must be testable
without the network. The server runs on 127.0.0.1 (random free port) in a background thread and keeps repos under a
temporary folder: `ROOT/{models,datasets,spaces}/NS/NAME/blobs/<git sha1>` plus a `repo.json` (branches, commits).
It answers what the client asks for:

- POST /api/repos/create, GET /api/whoami-v2, POST /api/validate-yaml (sent whenever a README.md is committed)
- POST /api/models/NS/NAME/preupload/REV, .../commit/REV (NDJSON), .../branch/NAME; GET .../refs
- GET /api/models/NS/NAME[/revision/REV], GET .../tree/REV[/PATH] (same under /api/datasets and /api/spaces)
- GET and HEAD /[datasets/|spaces/]NS/NAME/resolve/REV/PATH, with X-Repo-Commit, ETag (the git blob sha1) and
  Content-Length; a missing file is a 404 with X-Error-Code EntryNotFound (-> EntryNotFoundError), a missing or
  hidden repo a 404 with RepoNotFound (-> RepositoryNotFoundError), a missing revision RevisionNotFound.

Auth, as on the Hub: tokens map to user names; an unknown token is a 401; writing outside one's own namespace is a
403 (HfHubHTTPError); a private repo is a 404 to everyone but its owner. Like the Hub, a new repo holds one commit
with `.gitattributes`, and committing to a branch that does not exist is a 404 RevisionNotFound (create_branch
first, as transformers' push_to_hub does).

No LFS, no xet: preupload answers uploadMode "regular" for every file (the client then sends the bytes base64 in the
commit itself) and resolve never sends X-Xet-* headers (without them hf_hub_download uses plain HTTP). `hub.requests`
logs every request, so a test can check that no `/info/lfs` or xet-token URL was hit.

The `hub` fixture (fresh per test): `hub.endpoint` (http://127.0.0.1:PORT), `hub.token("alice")` (users alice and
bob; `hub.tokens` maps token -> user), `hub.env(home, user)`, `hub.read(repo_id, path, revision)` (stored bytes),
`hub.root`, `hub.requests` (the log), `hub.fail_next_commit`. A test module gets it with `pytest_plugins =
["hub_server"]`; `from hub_server import hub` also works but needs `# noqa: F401` on the import and `# noqa: F811` on
every test taking `hub`. A server bug is answered 500 and recorded in `hub.errors`, which fails the test at teardown.

Pointing clients at it:
- in-process: pass `endpoint=hub.endpoint`, `token=hub.token("alice")` (and `cache_dir=` for downloads) to HfApi,
  hf_hub_download, snapshot_download. huggingface_hub copies HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET
  into `huggingface_hub.constants` when first imported, so changing os.environ inside a test does nothing; and
  transformers keeps one module-level HfApi (`transformers.utils.hub.hf_api()`) built with the endpoint of that time.
- transformers (`from_pretrained`, `push_to_hub`): run it in a subprocess with `env=hub.env(home, "alice")`:
  HF_ENDPOINT, HF_HOME, HF_TOKEN, HF_HUB_DISABLE_XET=1, HF_HUB_DISABLE_TELEMETRY=1, with the caller's HF_* and
  TRANSFORMERS_* variables dropped; `hub.env(home, offline=True)` adds HF_HUB_OFFLINE=1 to load from the cache.

Quirks:
- `create_repo(exist_ok=True)` reads "url" from the body of the 409 answer, so the 409 carries it.
- With hf_xet installed, `HfApi.upload_folder` takes a pipelined path whose commit POST is retried with backoff
  (1 s, 2 s, 4 s...), so one dropped commit goes unnoticed. The `hub` fixture sets
  `huggingface_hub.constants.HF_HUB_DISABLE_XET = True` (read at call time) and `env()` sets HF_HUB_DISABLE_XET=1:
  upload_folder then calls create_commit, which posts the commit once, and `hub.fail_next_commit = True` (the server
  reads the next commit request, then closes the socket without answering) surfaces as httpx2.RemoteProtocolError.
"""

import base64
import hashlib
import json
import os
import re
import socket
import socketserver
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DEFAULT_TOKENS = {"token-alice": "alice", "token-bob": "bob"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Variables dropped from the caller's environment in `Hub.env`, so that nothing points elsewhere (cache, token...).
ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_")

_REPO = r"/api/(models|datasets|spaces)/([^/]+)/([^/]+)"
# (method, raw path regex, Hub method); groups are URL-unquoted before the call. HEAD is served as GET.
ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", _REPO + r"/preupload/([^/]+)", "preupload"),
    ("POST", _REPO + r"/commit/([^/]+)", "commit"),
    ("POST", _REPO + r"/branch/([^/]+)", "create_branch"),
    ("GET", _REPO + r"/refs", "refs"),
    ("GET", _REPO + r"/tree/([^/]+)(?:/(.+))?", "tree"),
    ("GET", _REPO + r"(?:/revision/([^/]+))?", "info"),
    ("GET", r"/(?:(datasets|spaces)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)", "resolve"),
]


class HubError(Exception):
    """An error answer: status, message, and the X-Error-Code the client maps to an exception class."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **body):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.body = status, message, code, headers or {}, body


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    drop: bool = False  # close the connection without answering (simulated network failure)


@dataclass
class Request:
    user: str | None
    args: list  # the route's groups, unquoted
    query: dict
    headers: Any  # http.server's case-insensitive Message
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")


def json_reply(data, status: int = 200, headers: dict | None = None) -> Reply:
    return Reply(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_sha1(content: bytes) -> str:
    """The oid git (and so the client's unchanged-file check) gives a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    folder: Path
    created_at: str = field(default_factory=now)
    branches: dict = field(default_factory=dict)
    commits: dict = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> str:
        """Branch name or commit sha (7+ hex digits) -> commit sha."""
        if revision in self.branches:
            return self.branches[revision]
        matches = [sha for sha in self.commits if len(revision) >= 7 and sha.startswith(revision)]
        if len(matches) != 1:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return matches[0]

    def files(self, sha: str) -> dict:
        return self.commits[sha]["files"]

    def blob(self, oid: str) -> Path:
        return self.folder / "blobs" / oid

    def store(self, content: bytes) -> str:
        oid = git_blob_sha1(content)
        self.blob(oid).parent.mkdir(parents=True, exist_ok=True)
        self.blob(oid).write_bytes(content)
        return oid

    def add_commit(self, branch: str, files: dict, title: str, description: str = "") -> str:
        parent = self.branches.get(branch)
        sha = hashlib.sha1(f"{parent} {title} {uuid.uuid4()}".encode()).hexdigest()
        self.commits[sha] = {"parent": parent, "title": title, "message": description, "date": now(), "files": files}
        self.branches[branch] = sha
        self.save()
        return sha

    def save(self) -> None:
        state = {"private": self.private, "branches": self.branches, "commits": self.commits}
        (self.folder / "repo.json").write_text(json.dumps(state, indent=1))


def tree_entries(repo: Repo, files: dict, base: str, recursive: bool) -> list[dict]:
    """The /tree listing of folder `base`: direct children, or everything below it when recursive."""
    prefix = f"{base}/" if base else ""
    below = sorted(p for p in files if p.startswith(prefix))
    if base and not below:
        raise HubError(404, f"{base} does not exist", "EntryNotFound")
    folders, entries = set(), []
    for path in below:
        parts = path[len(prefix) :].split("/")
        depth = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
        folders.update(prefix + "/".join(parts[: i + 1]) for i in range(depth))
        if recursive or len(parts) == 1:
            size = repo.blob(files[path]).stat().st_size
            entries.append({"type": "file", "oid": files[path], "size": size, "path": path})
    for folder in sorted(folders):
        oid = hashlib.sha1("\n".join(p for p in below if p.startswith(folder + "/")).encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
    return entries


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a `bytes=START-[END]` Range header; the client only sends one to resume."""
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header or "")
    if match is None:
        return None
    start, end = int(match[1]), int(match[2] or size - 1)
    return start, min(end, size - 1)


class Hub:
    """The server: repos in memory (mirrored to `root`), auth by token, a request log, failure switches."""

    def __init__(self, root: str | os.PathLike, tokens: dict | None = None):
        self.root = Path(root)
        self.tokens = dict(DEFAULT_TOKENS if tokens is None else tokens)
        self.fail_next_commit = False
        self.requests: list[str] = []  # "METHOD /raw/path?query", in arrival order
        self.errors: list[str] = []  # tracebacks of server bugs (answered 500); the fixture fails on them
        self._repos: dict[tuple[str, str], Repo] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ test-facing helpers

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def token(self, user: str) -> str:
        return next(token for token, name in self.tokens.items() if name == user)

    def env(self, home: str | os.PathLike, user: str | None = None, offline: bool = False) -> dict:
        """Environment for a subprocess whose huggingface_hub / transformers must use this hub and cache `home`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1")
        env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        if user is not None:
            env["HF_TOKEN"] = self.token(user)
        if offline:
            env["HF_HUB_OFFLINE"] = "1"
        return env

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """A file's bytes at a revision, straight from storage (to check what an upload stored)."""
        repo = self._repos[(repo_type, repo_id)]
        return repo.blob(repo.files(repo.resolve(revision))[path]).read_bytes()

    def start(self) -> "Hub":
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.close_all()
        self._thread.join()

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ dispatch

    def handle(self, method: str, raw_path: str, headers, body: bytes) -> Reply:
        """One request -> one reply; HTTP-free, so it is the whole protocol in one place."""
        url = urlsplit(raw_path)
        try:
            with self._lock:  # one request at a time: simple, and plenty fast for tests
                self.requests.append(f"{method} {raw_path}")
                user = self._user(headers.get("Authorization"))
                for route_method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, url.path)
                    if match and route_method == ("GET" if method == "HEAD" else method):
                        args = [unquote(g) if g is not None else None for g in match.groups()]
                        return getattr(self, name)(Request(user, args, parse_qs(url.query), headers, body))
            raise HubError(404, f"No route for {method} {url.path} in the test hub")
        except HubError as e:
            error_headers = {"X-Error-Message": e.message, **e.headers}
            if e.code:
                error_headers["X-Error-Code"] = e.code
            return json_reply({"error": e.message, **e.body}, e.status, error_headers)
        except Exception:
            self.errors.append(traceback.format_exc())
            return json_reply({"error": self.errors[-1]}, 500)

    def _user(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.tokens[token]

    def _visible(self, user: str | None, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _writable(self, user: str | None, repo_type: str, repo_id: str) -> Repo:
        if user is None:
            raise HubError(401, "You must be authenticated to write to a repo")
        repo = self._visible(user, repo_type, repo_id)
        if repo.owner != user:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ endpoints

    def whoami(self, request: Request) -> Reply:
        if request.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return json_reply({"type": "user", "name": request.user, "fullname": request.user, "orgs": [], "auth": auth})

    def validate_yaml(self, request: Request) -> Reply:
        return json_reply({"errors": [], "warnings": []})

    def create_repo(self, request: Request) -> Reply:
        if request.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        payload = request.json()
        namespace, name = payload.get("organization") or request.user, payload.get("name", "")
        key = repo_type, repo_id = payload.get("type") or "model", f"{namespace}/{name}"
        if not (NAME.fullmatch(namespace) and NAME.fullmatch(name)) or ".." in repo_id:
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        if namespace != request.user:
            raise HubError(403, f"You don't have the rights to create a repo under the namespace {namespace!r}")
        if key in self._repos:  # with exist_ok=True the client reads "url" even from this answer
            raise HubError(409, f"You already created this {repo_type} repo", url=self._repo_url(self._repos[key]))
        repo = Repo(repo_type, repo_id, payload.get("visibility") == "private", self.root / f"{repo_type}s" / repo_id)
        repo.add_commit("main", {".gitattributes": repo.store(GITATTRIBUTES)}, "initial commit")
        self._repos[key] = repo
        return json_reply({"url": self._repo_url(repo), "name": repo_id, "id": repo_id})

    def preupload(self, request: Request) -> Reply:
        api_type, namespace, name, revision = request.args
        repo = self._writable(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        files = repo.files(repo.resolve(revision))
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
            for f in request.json()["files"]
        ]
        return json_reply({"files": answer, "commitOid": repo.resolve(revision)})

    def commit(self, request: Request) -> Reply:
        if self.fail_next_commit:
            self.fail_next_commit = False
            return Reply(drop=True)
        api_type, namespace, name, branch = request.args
        repo = self._writable(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        if request.flag("create_pr"):
            raise HubError(400, "Pull requests are not supported by the test hub")
        header, *operations = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch} (not a branch)", "RevisionNotFound")
        head = repo.branches[branch]
        if not head.startswith(header["value"].get("parentCommit") or ""):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.files(head))
        for operation in operations:
            apply_operation(repo, files, operation["key"], operation["value"])
        summary, description = header["value"]["summary"], header["value"].get("description", "")
        sha = repo.add_commit(branch, files, summary, description)
        return json_reply({"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url(repo)}/commit/{sha}"})

    def create_branch(self, request: Request) -> Reply:
        api_type, namespace, name, branch = request.args
        repo = self._writable(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        start = repo.resolve(request.json().get("startingPoint") or "main")
        if branch in repo.branches:
            raise HubError(409, f"Reference refs/heads/{branch} already exists")
        repo.branches[branch] = start
        repo.save()
        return json_reply({})

    def refs(self, request: Request) -> Reply:
        api_type, namespace, name = request.args
        repo = self._visible(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": sha} for b, sha in repo.branches.items()]
        return json_reply({"branches": branches, "tags": [], "converts": [], "pullRequests": []})

    def info(self, request: Request) -> Reply:
        api_type, namespace, name, revision = request.args
        repo = self._visible(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        sha = repo.resolve(revision or "main")
        siblings = [{"rfilename": path} for path in sorted(repo.files(sha))]
        if request.flag("blobs"):
            for sibling in siblings:
                oid = repo.files(sha)[sibling["rfilename"]]
                sibling.update(size=repo.blob(oid).stat().st_size, blobId=oid)
        info = {"id": repo.repo_id, "modelId": repo.repo_id, "author": repo.owner, "sha": sha, "private": repo.private}
        info.update(gated=False, disabled=False, downloads=0, likes=0, tags=[], siblings=siblings)
        return json_reply({**info, "createdAt": repo.created_at, "lastModified": repo.commits[sha]["date"]})

    def tree(self, request: Request) -> Reply:
        api_type, namespace, name, revision, path = request.args
        repo = self._visible(request.user, API_TYPES[api_type], f"{namespace}/{name}")
        files = repo.files(repo.resolve(revision))
        return json_reply(tree_entries(repo, files, (path or "").strip("/"), request.flag("recursive")))

    def resolve(self, request: Request) -> Reply:
        url_type, namespace, name, revision, path = request.args
        repo = self._visible(request.user, API_TYPES.get(url_type, "model"), f"{namespace}/{name}")
        sha = repo.resolve(revision)
        if path not in repo.files(sha):
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        oid = repo.files(sha)[path]
        content = repo.blob(oid).read_bytes()
        reply_headers = {"X-Repo-Commit": sha, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
        reply_headers["Accept-Ranges"] = "bytes"
        span = byte_range(request.headers.get("Range"), len(content))
        if span is None:
            return Reply(200, content, reply_headers)
        reply_headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(content)}"
        return Reply(206, content[span[0] : span[1] + 1], reply_headers)


def apply_operation(repo: Repo, files: dict, key: str, value: dict) -> None:
    """One NDJSON commit line (after the header) applied to the file map `path -> oid`."""
    if key == "file":
        files[value["path"]] = repo.store(base64.b64decode(value["content"]))
    elif key == "deletedFile":
        if files.pop(value["path"], None) is None:
            raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
    elif key == "deletedFolder":
        prefix = value["path"].rstrip("/") + "/"
        for path in [p for p in files if p.startswith(prefix)]:
            del files[path]
    else:
        raise HubError(400, f"Unsupported commit operation {key!r}: the test hub stores regular files only")


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive (the client pools connections): every reply carries a Content-Length."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _serve(self) -> None:
        reply = self.server.hub.handle(self.command, self.path, self.headers, self._read_body())
        if reply.drop:
            self.close_connection = True  # no response: the client sees the server hang up
            return
        self.send_response(reply.status)
        for key, value in {**reply.headers, "Content-Length": str(len(reply.body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return b"".join(chunks)

    def log_message(self, format, *args) -> None:
        pass  # quiet: `Hub.requests` is the log


class _Server(ThreadingHTTPServer):
    """Tracks open connections so that stopping also ends the keep-alive handler threads."""

    daemon_threads = True

    def __init__(self, hub: Hub):
        self.hub = hub
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version does a (possibly slow) reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        self.server_close()
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    """A fresh hub with users alice and bob; in-process uploads take the plain create_commit path (see above)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    with Hub(tmp_path_factory.mktemp("hub")) as server:
        yield server
    assert not server.errors, "the test hub failed:\n" + "\n".join(server.errors)
