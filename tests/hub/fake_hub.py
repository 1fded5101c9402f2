"""A tiny in-memory stand-in for the Hugging Face Hub HTTP API, bound to 127.0.0.1 only.

It speaks just the endpoints that ``HfApi.create_repo`` + ``HfApi.upload_folder`` / ``create_commit``
(and ``PeftModel.push_to_hub``, which goes through transformers' ``PushToHubMixin``) call in
huggingface_hub 2.4 when Xet is disabled (``HF_HUB_DISABLE_XET=1``):

============================================================  =========================================
``POST /api/repos/create``                                    create_repo (409 when it exists)
``GET  /api/{type}s/{repo_id}[/revision/{rev}]``              repo_info (exist_ok fallback, no-op commit,
                                                              transformers' resolve_revision)
``GET  /api/whoami-v2``                                       whoami
``POST /api/validate-yaml``                                   create_commit validates README.md metadata
``POST /api/{type}s/{repo_id}/preupload/{rev}``               upload mode per file ("regular" / "lfs")
``POST /{prefix}{repo_id}.git/info/lfs/objects/batch``        LFS batch API, "basic" transfer
``PUT  /_lfs/upload/{oid}``                                   LFS object upload (href handed out above)
``POST /_lfs/verify/{oid}``                                   LFS verify action
``POST /api/{type}s/{repo_id}/commit/{rev}``                  ndjson commit (inline base64 + lfsFile)
``HEAD|GET /{prefix}{repo_id}/resolve/{rev}/{path}``          file download and metadata (hf_hub_download,
                                                              from_pretrained, ModelCard.load); rev: "main"
                                                              or any commit oid (its snapshot)
============================================================  =========================================

Everything else answers 404 and is recorded in ``FakeHub.unhandled`` so that tests can assert that
the client did not reach for an endpoint the fake does not know. Files whose suffix is in
``lfs_suffixes`` (or that are larger than ``lfs_threshold``) are routed through LFS by the preupload
answer, as the real Hub does for ``*.safetensors`` via its default ``.gitattributes``; the rest go
inline (base64) in the commit payload. No 5xx is ever returned, so the client's retry-with-backoff
loops are never entered.

Use it as a context manager; it binds a random free port and shuts itself down on exit::

    with FakeHub() as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1", ...}
        ...
        hub.files("user/repo")  # {path: bytes}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 64 * 1024 * 1024  # refuse anything bigger: the tests push kilobytes
_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_PLURALS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO = r"[\w.\-]+(?:/[\w.\-]+)?"


def git_blob_sha1(data: bytes) -> str:
    """Git blob oid, which is what ``CommitOperationAdd._local_oid`` computes for regular files."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    create_payload: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[dict[str, Any]] = field(default_factory=list)
    #: commit oid -> (files, lfs paths) as of that commit, so that `revision=<oid>` reads that state
    snapshots: dict[str, tuple[dict[str, bytes], set[str]]] = field(default_factory=dict)

    @property
    def sha(self) -> str:
        return self.commits[-1]["oid"] if self.commits else "0" * 40

    def at(self, revision: str | None) -> tuple[str, dict[str, bytes], set[str]] | None:
        """(sha, files, lfs paths) at `revision` ("main", None or a commit oid); None for an unknown one."""
        if revision in (None, "main", self.sha):
            return self.sha, self.files, self.lfs_paths
        if revision in self.snapshots:
            return (revision, *self.snapshots[revision])
        return None


class FakeHub:
    """Threaded fake Hub server. All state lives in memory, guarded by ``self.lock``."""

    def __init__(
        self,
        *,
        username: str = "fake-user",
        lfs_suffixes: tuple[str, ...] = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg", ".npz"),
        lfs_threshold: int = 10 * 1024 * 1024,
        require_token: bool = True,
    ) -> None:
        self.username = username
        self.lfs_suffixes = lfs_suffixes
        self.lfs_threshold = lfs_threshold
        self.require_token = require_token
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[dict[str, Any]] = []  # method, path, status, token
        self.unhandled: list[str] = []
        self.validated_yaml: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "FakeHub is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: the OS picks a free one
        server.daemon_threads = True
        server.timeout = 1.0
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ inspection helpers
    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[(repo_type, repo_id)].files)

    def calls(self, method: str | None = None, pattern: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                r
                for r in self.requests
                if (method is None or r["method"] == method) and (pattern is None or re.search(pattern, r["path"]))
            ]

    # ------------------------------------------------------------------ internal
    def _url(self, repo: Repo) -> str:
        return f"{self.endpoint}/{_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return path.lower().endswith(self.lfs_suffixes) or size > self.lfs_threshold or b"\0" in sample


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/0.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output quiet
        pass

    # -------------------------------------------------------------- plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        head: bool = False,
    ) -> None:
        body = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self._status = status

    def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers=headers, head=head)

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    def _authorized(self) -> bool:
        if self.fake.require_token and not self._token():
            self._error(401, "Invalid credentials in Authorization header")
            return False
        return True

    def _dispatch(self, method: str) -> None:
        self._status = 0
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        try:
            body = self._body() if method in ("POST", "PUT") else b""
        except ValueError:
            self.close_connection = True
            return self._error(413, "Payload Too Large")
        try:
            handled = self._route(method, path, query, body)
        except Exception as exc:  # a bug in the fake: answer 4xx (never 5xx, which the client retries)
            self.close_connection = True
            handled = True
            self._error(400, f"FakeHub error: {type(exc).__name__}: {exc}")
        if not handled:
            with self.fake.lock:
                self.fake.unhandled.append(f"{method} {self.path}")
            self._error(404, f"FakeHub does not implement {method} {path}", head=method == "HEAD")
        with self.fake.lock:
            self.fake.requests.append(
                {"method": method, "path": path, "query": query, "status": self._status, "token": self._token()}
            )

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -------------------------------------------------------------- routes
    def _route(self, method: str, path: str, query: dict, body: bytes) -> bool:
        fake = self.fake
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body or b"{}"))
        if method == "GET" and path == "/api/whoami-v2":
            if not self._authorized():
                return True
            self._send(200, {"type": "user", "name": fake.username, "orgs": [], "auth": {"type": "access_token"}})
            return True
        if method == "POST" and path == "/api/validate-yaml":
            content = json.loads(body or b"{}").get("content", "")
            with fake.lock:
                fake.validated_yaml.append(content)
            self._send(200, {"errors": [], "warnings": []})
            return True
        if m := re.fullmatch(rf"/api/(models|datasets|spaces)/({_REPO})/preupload/([^/]+)", path):
            return method == "POST" and self._preupload(_PLURALS[m[1]], m[2], json.loads(body or b"{}"))
        if m := re.fullmatch(rf"/api/(models|datasets|spaces)/({_REPO})/commit/([^/]+)", path):
            return method == "POST" and self._commit(_PLURALS[m[1]], m[2], m[3], body)
        if m := re.fullmatch(rf"/api/(models|datasets|spaces)/({_REPO})(?:/revision/([^/]+))?", path):
            return method == "GET" and self._repo_info(_PLURALS[m[1]], m[2], m[3])
        if m := re.fullmatch(rf"/(datasets/|spaces/)?({_REPO})\.git/info/lfs/objects/batch", path):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m[1] or "", "model")
            return method == "POST" and self._lfs_batch(repo_type, m[2], json.loads(body or b"{}"))
        if m := re.fullmatch(r"/_lfs/upload/([0-9a-f]{64})", path):
            return method == "PUT" and self._lfs_put(m[1], body)
        if m := re.fullmatch(r"/_lfs/verify/([0-9a-f]{64})", path):
            return method == "POST" and self._lfs_verify(m[1], json.loads(body or b"{}"))
        if m := re.fullmatch(rf"/(datasets/|spaces/)?({_REPO})/resolve/([^/]+)/(.+)", path):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m[1] or "", "model")
            return method in ("GET", "HEAD") and self._resolve(repo_type, m[2], m[3], m[4], head=method == "HEAD")
        return False

    def _get_repo(self, repo_type: str, repo_id: str, head: bool = False) -> Repo | None:
        with self.fake.lock:
            repo = self.fake.repos.get((repo_type, repo_id))
        if repo is None:
            self._error(404, "Repository not found", code="RepoNotFound", head=head)
        return repo

    def _create_repo(self, payload: dict) -> bool:
        if not self._authorized():
            return True
        fake = self.fake
        name, org = payload.get("name"), payload.get("organization")
        repo_type = payload.get("type") or "model"
        if not name or repo_type not in _PREFIXES:
            self._error(400, f"Invalid create payload {payload}")
            return True
        repo_id = f"{org or fake.username}/{name}"
        with fake.lock:
            existing = fake.repos.get((repo_type, repo_id))
            if existing is None:
                repo = Repo(repo_id, repo_type, payload.get("visibility") == "private", dict(payload))
                fake.repos[(repo_type, repo_id)] = repo
        if existing is not None:
            self._send(409, {"error": "You already created this model repo", "url": fake._url(existing)})
        else:
            self._send(200, {"url": fake._url(repo), "name": repo_id, "id": repo_id})
        return True

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None = None) -> bool:
        repo = self._get_repo(repo_type, repo_id)
        if repo is not None:
            with self.fake.lock:
                state = repo.at(revision)
            if state is None:
                self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
                return True
            sha, files, _ = state
            siblings = [{"rfilename": p} for p in sorted(files)]
            self._send(200, {"id": repo_id, "_id": repo_id, "sha": sha, "private": repo.private, "siblings": siblings})
        return True

    def _preupload(self, repo_type: str, repo_id: str, payload: dict) -> bool:
        if not self._authorized():
            return True
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return True
        answer = []
        with self.fake.lock:
            for f in payload.get("files", []):
                sample = base64.b64decode(f.get("sample", ""))
                lfs = self.fake._is_lfs(f["path"], int(f["size"]), sample)
                old = repo.files.get(f["path"])
                oid = None
                if old is not None:
                    oid = hashlib.sha256(old).hexdigest() if f["path"] in repo.lfs_paths else git_blob_sha1(old)
                answer.append(
                    {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
                )
        self._send(200, {"files": answer})
        return True

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict) -> bool:
        if not self._authorized():
            return True
        if self._get_repo(repo_type, repo_id) is None:
            return True
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            self._error(400, f"FakeHub only supports basic LFS uploads, got {payload}")
            return True
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            with self.fake.lock:
                present = oid in self.fake.lfs_objects
            if not present:  # no "actions" means "already stored" to the client
                entry["actions"] = {
                    "upload": {"href": f"{self.fake.endpoint}/_lfs/upload/{oid}", "header": {}},
                    "verify": {"href": f"{self.fake.endpoint}/_lfs/verify/{oid}", "header": {}},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})
        return True

    def _lfs_put(self, oid: str, body: bytes) -> bool:
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, f"Uploaded content does not match oid {oid}")
            return True
        with self.fake.lock:
            self.fake.lfs_objects[oid] = body
        self._send(200)
        return True

    def _lfs_verify(self, oid: str, payload: dict) -> bool:
        with self.fake.lock:
            data = self.fake.lfs_objects.get(oid)
        if data is None or payload.get("oid") != oid or int(payload.get("size", -1)) != len(data):
            self._error(404, f"LFS object {oid} not found or size mismatch")
        else:
            self._send(200, {"oid": oid, "size": len(data)})
        return True

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> bool:
        if not self._authorized():
            return True
        repo = self._get_repo(repo_type, repo_id)
        if repo is None:
            return True
        if revision != "main":
            self._error(404, f"Revision {revision} not found", code="RevisionNotFound")
            return True
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            self._error(400, "Commit payload must start with a header line")
            return True
        header, adds, lfs_adds, deletes = lines[0]["value"], {}, set(), []
        with self.fake.lock:
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise ValueError(f"unsupported encoding {value.get('encoding')}")
                    adds[value["path"]] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    data = self.fake.lfs_objects.get(value["oid"])
                    if data is None or ("size" in value and int(value["size"]) != len(data)):
                        self._error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                        return True
                    adds[value["path"]] = data
                    lfs_adds.add(value["path"])
                elif key in ("deletedFile", "deletedFolder"):
                    deletes.append((key, value["path"]))
                else:
                    raise ValueError(f"unsupported commit operation {key}")
            for key, p in deletes:
                for existing in list(repo.files):
                    if existing == p or (key == "deletedFolder" and existing.startswith(p.rstrip("/") + "/")):
                        repo.files.pop(existing)
                        repo.lfs_paths.discard(existing)
            for p, data in adds.items():
                repo.files[p] = data
                if p in lfs_adds:
                    repo.lfs_paths.add(p)
                else:
                    repo.lfs_paths.discard(p)
            oid = hashlib.sha1(repo.sha.encode() + body).hexdigest()
            repo.snapshots[oid] = (dict(repo.files), set(repo.lfs_paths))
            repo.commits.append(
                {
                    "oid": oid,
                    "summary": header.get("summary"),
                    "description": header.get("description"),
                    "added": sorted(adds),
                    "lfs": sorted(lfs_adds),
                    "deleted": [p for _, p in deletes],
                }
            )
        self._send(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.fake._url(repo)}/commit/{oid}",
                "pullRequestUrl": None,
            },
        )
        return True

    def _resolve(self, repo_type: str, repo_id: str, revision: str, filename: str, head: bool) -> bool:
        repo = self._get_repo(repo_type, repo_id, head=head)
        if repo is None:
            return True
        with self.fake.lock:
            state = repo.at(revision)
        if state is None:
            self._error(404, f"Invalid rev id: {revision}", code="RevisionNotFound", head=head)
            return True
        sha, files, lfs_paths = state
        data = files.get(filename)
        is_lfs = filename in lfs_paths
        if data is None:
            self._error(404, "Entry not found", code="EntryNotFound", head=head)
            return True
        etag = hashlib.sha256(data).hexdigest() if is_lfs else git_blob_sha1(data)
        self._send(200, raw=data, headers={"X-Repo-Commit": sha, "ETag": f'"{etag}"'}, head=head)
        return True


def client_env(hub: FakeHub, hf_home: str, **extra: str) -> dict[str, str]:
    """The environment of a fresh client process that talks to `hub` only: no HF_* or proxy variable of the
    caller (no token, no offline mode), its own empty `hf_home` (nothing cached), Xet and telemetry off."""
    import os

    drop = ("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.upper().endswith("_PROXY")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=hf_home, HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="10", NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", **extra)  # fmt: skip
    return env
