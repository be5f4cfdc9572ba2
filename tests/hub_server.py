"""A small stand-in for the Hugging Face Hub's HTTP API, on 127.0.0.1, for upload tests.

The real ``huggingface_hub`` client talks to it through ``HF_ENDPOINT``. Routes covered (all a
``create_repo`` + ``create_branch`` + ``upload_folder`` of regular files needs):

* ``GET  /api/whoami-v2``                                 token check
* ``POST /api/repos/create``                              repository creation (name, organization, visibility)
* ``POST /api/validate-yaml``                             model card metadata check (always valid)
* ``POST /api/models/{owner}/{name}/branch/{branch}``     branch creation
* ``POST /api/models/{owner}/{name}/preupload/{rev}``     upload modes: every file "regular"
* ``POST /api/models/{owner}/{name}/commit/{rev}``        NDJSON commit: header + base64 files

Every file is answered as "regular", so contents arrive inline in the commit (no LFS or Xet
storage to emulate). Requests without the expected bearer token get 401. What was received is
kept in :attr:`HubState`: repositories, branches and commits (message, revision, file bytes).
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]


@dataclass
class HubState:
    token: str
    repos: dict[str, dict] = field(default_factory=dict)
    branches: dict[str, set] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class HubHandler(BaseHTTPRequestHandler):
    state: HubState

    def log_message(self, *args):  # keep test output quiet
        pass

    def reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self) -> bool:
        if self.headers.get("authorization") == f"Bearer {self.state.token}":
            return True
        self.reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def url(self, path: str) -> str:
        return f"http://{self.headers['host']}/{path}"

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length", 0)))

    def do_GET(self):
        path = urlparse(self.path).path
        self.state.requests.append(f"GET {path}")
        if not self.authorized():
            return
        if path == "/api/whoami-v2":
            return self.reply(200, {"type": "user", "name": "tester", "auth": {"type": "access_token"}})
        self.reply(404, {"error": f"no route {path}"})

    def do_POST(self):
        path = urlparse(self.path).path
        self.state.requests.append(f"POST {path}")
        if not self.authorized():
            return
        body = self.body()
        if path == "/api/repos/create":
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'tester'}/{request['name']}"
            private = request.get("visibility") == "private" or bool(request.get("private"))
            self.state.repos[repo_id] = {"private": private, "type": request.get("type")}
            self.state.branches.setdefault(repo_id, {"main"})
            return self.reply(200, {"url": self.url(repo_id), "name": repo_id})
        if path == "/api/validate-yaml":  # the model card's metadata, checked before a commit
            return self.reply(200, {"errors": [], "warnings": []})
        parts = path.split("/")  # ['', 'api', 'models', owner, name, action, rev...]
        if len(parts) >= 7 and parts[2] == "models":
            repo_id, action, revision = f"{parts[3]}/{parts[4]}", parts[5], unquote("/".join(parts[6:]))
            if repo_id not in self.state.repos:
                return self.reply(404, {"error": f"repository {repo_id} not found"})
            if action == "branch":
                self.state.branches[repo_id].add(revision)
                return self.reply(200, {})
            if action == "preupload":
                files = json.loads(body)["files"]
                return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files]})
            if action == "commit":
                return self.commit(repo_id, revision, body)
        self.reply(404, {"error": f"no route {path}"})

    def commit(self, repo_id: str, revision: str, body: bytes) -> None:
        if revision not in self.state.branches[repo_id]:
            return self.reply(404, {"error": f"revision {revision} not found"})
        summary, files = "", {}
        for line in body.decode().splitlines():
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"]["summary"]
            elif item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            else:
                return self.reply(400, {"error": f"unsupported commit operation {item['key']}"})
        self.state.commits.append(Commit(repo_id, revision, summary, files))
        oid = f"{len(self.state.commits):040x}"
        self.reply(200, {"commitUrl": self.url(f"{repo_id}/commit/{oid}"), "commitOid": oid})


def start_hub(token: str) -> tuple[ThreadingHTTPServer, HubState, str]:
    """A running server, what it records, and its endpoint URL (for HF_ENDPOINT)."""
    state = HubState(token=token)
    handler = type("Handler", (HubHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state, f"http://127.0.0.1:{server.server_address[1]}"
