"""A minimal stand-in for the Hugging Face Hub HTTP API, serving local directories.

It speaks just enough of the protocol for huggingface_hub's model_info and
snapshot_download: repo info with file sizes, HEAD/GET (with Range) on resolve URLs,
and the hub's error headers (RepoNotFound, GatedRepo, RevisionNotFound).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, tuple[Path, str]] = {}  # repo id -> (directory, commit sha)
        self.gated: set[str] = set()
        self.private: dict[str, str] = {}  # repo id -> token that may read it
        self.requests: list[tuple[str, str, dict]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo_id: str, directory: Path) -> str:
        h = hashlib.sha1(repo_id.encode())
        for p in sorted(directory.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + str(p.stat().st_size).encode())
        sha = h.hexdigest()
        self.repos[repo_id] = (directory, sha)
        return sha

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _error(self, status: int, code: str | None, message: str = "") -> None:
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                if message:
                    self.send_header("X-Error-Message", message)
                body = json.dumps({"error": message or code or "error"}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _access(self, repo_id: str) -> bool:
                """False (and an error sent) when the caller may not read the repo."""
                auth = self.headers.get("Authorization", "")
                if repo_id in hub.gated:
                    self._error(403 if auth else 401, "GatedRepo", "Access to model is restricted.")
                    return False
                if repo_id in hub.private and auth != f"Bearer {hub.private[repo_id]}":
                    self._error(401, "RepoNotFound", "Repository not found")
                    return False
                if repo_id not in hub.repos:
                    self._error(401 if not auth else 404, "RepoNotFound", "Repository not found")
                    return False
                return True

            def _revision_ok(self, repo_id: str, revision: str) -> bool:
                sha = hub.repos[repo_id][1]
                if revision not in ("main", sha):
                    self._error(404, "RevisionNotFound", "Invalid rev id")
                    return False
                return True

            def do_GET(self) -> None:
                self._serve()

            def do_HEAD(self) -> None:
                self._serve()

            def _serve(self) -> None:
                path = self.path.split("?", 1)[0]
                hub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                    repo_id, revision = m.group(1), m.group(2) or "main"
                    if self._access(repo_id) and self._revision_ok(repo_id, revision):
                        self._info(repo_id)
                    return
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                    repo_id, revision = m.groups()
                    if self._access(repo_id) and self._revision_ok(repo_id, revision):
                        self._tree(repo_id)
                    return
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    repo_id, revision, filename = m.groups()
                    if self._access(repo_id) and self._revision_ok(repo_id, revision):
                        self._file(repo_id, filename)
                    return
                self._error(404, None, "not found")

            def _info(self, repo_id: str) -> None:
                # As the hub: each file's content hash (LFS sha256 or git blob id; here sha256 for
                # both, as the ETag below), and the parameter count read from safetensors headers.
                directory, sha = hub.repos[repo_id]
                siblings, n_params = [], 0
                for p in sorted(directory.iterdir()):
                    if not p.is_file():
                        continue
                    digest = hashlib.sha256(p.read_bytes()).hexdigest()
                    sibling = {"rfilename": p.name, "size": p.stat().st_size}
                    if p.suffix == ".safetensors":
                        sibling["lfs"] = {"sha256": digest, "size": p.stat().st_size, "pointerSize": 134}
                        with open(p, "rb") as f:
                            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
                        n_params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
                    else:
                        sibling["blobId"] = digest
                    siblings.append(sibling)
                info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": False,
                        "siblings": siblings, "tags": [], "downloads": 0, "likes": 0}
                if n_params:
                    info["safetensors"] = {"parameters": {"BF16": n_params}, "total": n_params}
                self._json(info)

            def _tree(self, repo_id: str) -> None:
                directory, _ = hub.repos[repo_id]
                self._json([{"type": "file", "path": p.name, "size": p.stat().st_size,
                             "oid": hashlib.sha1(p.name.encode()).hexdigest()}
                            for p in sorted(directory.iterdir()) if p.is_file()])

            def _json(self, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _file(self, repo_id: str, filename: str) -> None:
                directory, sha = hub.repos[repo_id]
                target = directory / filename
                if not target.is_file():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", sha)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = target.read_bytes()
                etag = hashlib.sha256(data).hexdigest()
                start = 0
                if rng := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "")):
                    start = int(rng.group(1))
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", sha)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[start:])

        return Handler
