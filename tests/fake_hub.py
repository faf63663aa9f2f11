"""A small in-memory stand-in for the Hugging Face Hub, for testing uploads and downloads offline.

`FakeHub` runs a stdlib `http.server` on 127.0.0.1 (a free port) in a daemon thread and implements the endpoints the
real `huggingface_hub` client uses to create repositories and branches, commit files, list them, read repository
info and download files. Point a process at it with `HF_ENDPOINT=hub.url`, set before the HF
libraries are imported. Every request is logged in `hub.requests` for assertions.

Files are accepted only as "regular" (base64 in the commit payload): LFS / xet uploads, real authentication (any
bearer token counts) and the Hub's metadata validation are not emulated. The server is bounded: request bodies
above `max_body_bytes` are refused, and it shuts itself down after `max_lifetime` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


REPO = r"(?P<repo>[^/]+/[^/]+)"
KIND = r"(?P<kind>models|datasets)"
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", rf"/api/{KIND}/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{KIND}/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/{KIND}/{REPO}/branch/(?P<branch>[^/]+)", "create_branch"),
    ("GET", rf"/api/{KIND}/{REPO}/refs", "refs"),
    ("GET", rf"/api/{KIND}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/{KIND}/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"/(?P<prefix>datasets/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class HubError(Exception):
    """An error response: HTTP status, the Hub's X-Error-Code and a message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def git_blob_oid(content: bytes) -> str:
    """The git object id of a file, as the Hub reports it for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    """A repository: its visibility, branches (name -> head commit) and commits (sha -> files and message)."""

    repo_type: str
    repo_id: str
    private: bool
    branches: dict = field(default_factory=dict)
    commits: dict = field(default_factory=dict)

    def add_commit(self, branch: str, files: dict, message: str) -> str:
        parent = self.branches.get(branch)
        digest = hashlib.sha1(f"{self.repo_id}\0{parent}\0{message}\0{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + git_blob_oid(files[path]).encode())
        sha = digest.hexdigest()
        self.commits[sha] = {"files": files, "message": message, "parent": parent}
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str:
        """The commit sha of a branch name or commit sha; raises RevisionNotFound."""
        revision = unquote(revision)
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.commits:
            return revision
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")


class FakeHub:
    """The fake Hub server; use as a context manager (`with FakeHub() as hub: ... hub.url`)."""

    def __init__(self, user: str = "someuser", max_lifetime: float = 300.0, max_body_bytes: int = 256 << 20):
        self.user = user
        self.max_lifetime = max_lifetime
        self.max_body_bytes = max_body_bytes
        self.repos: dict = {}
        self.requests: list = []
        self._lock = threading.Lock()
        self._server = None
        self._timer = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub._handle(self, "GET")

            def do_HEAD(self):
                hub._handle(self, "HEAD")

            def do_POST(self):
                hub._handle(self, "POST")

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(self.max_lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        """The stored repository (KeyError if it was never created)."""
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict:
        """path -> bytes of a repository at a revision."""
        repo = self.repo(repo_id, repo_type)
        return repo.commits[repo.resolve(revision)]["files"]

    # ------------------------------------------------------------------------------------------------ dispatch

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(handler.path)
        path = unquote(url.path)
        try:
            body = self._read_body(handler)
            entry = {"method": method, "path": path, "query": parse_qs(url.query),
                     "authorization": handler.headers.get("Authorization")}  # fmt: skip
            with self._lock:
                self.requests.append(entry)
                for route_method, pattern, name in ROUTES:
                    match = re.fullmatch(pattern, path)
                    if match and route_method == method:
                        status, headers, payload = getattr(self, "_" + name)(match.groupdict(), body, entry)
                        break
                else:
                    raise HubError(404, "EntryNotFound", f"The fake Hub has no route for {method} {path}")
        except HubError as error:
            status, payload = error.status, json.dumps({"error": error.message}).encode()
            headers = {"X-Error-Code": error.code, "X-Error-Message": error.message, "Content-Type": "application/json"}
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", headers.get("Content-Length", str(len(payload))))
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(payload)

    def _read_body(self, handler) -> bytes:
        length = int(handler.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes:
            raise HubError(413, "PayloadTooLarge", f"request body of {length} bytes exceeds {self.max_body_bytes}")
        return handler.rfile.read(length) if length else b""

    def _stored(self, match: dict, entry: dict) -> Repo:
        repo_type = "dataset" if match.get("kind") == "datasets" or match.get("prefix") else "model"
        repo = self.repos.get((repo_type, match["repo"]))
        if repo is None or (repo.private and not entry["authorization"]):
            raise HubError(404, "RepoNotFound", f"Repository Not Found: {match['repo']}")
        return repo

    @staticmethod
    def _json(payload, status: int = 200, headers=None) -> tuple:
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()

    # ------------------------------------------------------------------------------------------------ endpoints

    def _create_repo(self, match, body, entry):
        request = json.loads(body)
        entry["json"] = request
        repo_type = request.get("type") or "model"
        repo_id = f"{request.get('organization') or self.user}/{request['name']}"
        url = f"{self.url}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, "RepoExists", f"You already created this {repo_type} repo: {url}")
        repo = Repo(repo_type, repo_id, private=request.get("visibility") == "private")
        repo.add_commit("main", {}, "initial commit")
        self.repos[(repo_type, repo_id)] = repo
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, match, body, entry):
        content = json.loads(body)["content"]
        header = re.match(r"---\n(.*?)\n---", content, re.S)
        try:
            yaml.safe_load(header.group(1) if header else "")
        except yaml.YAMLError as error:
            return self._json({"errors": [{"message": str(error)}], "warnings": []}, status=400)
        return self._json({"errors": [], "warnings": []})

    def _whoami(self, match, body, entry):
        if not entry["authorization"]:
            raise HubError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return self._json({"type": "user", "name": self.user, "auth": {"type": "access_token"}})

    def _preupload(self, match, body, entry):
        self._stored(match, entry).resolve(match["rev"])
        files = json.loads(body)["files"]
        return self._json({"files": [
            {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for item in files
        ]})  # fmt: skip

    def _commit(self, match, body, entry):
        repo = self._stored(match, entry)
        branch = unquote(match["rev"])
        if branch not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch} (create the branch first)")
        files = dict(repo.commits[repo.branches[branch]]["files"])
        summary = ""
        for line in body.splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {path: data for path, data in files.items() if not path.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise HubError(400, "BadRequest", f"the fake Hub does not support {key!r} operations (LFS / xet)")
        sha = repo.add_commit(branch, files, summary)
        entry["commit"] = {"revision": branch, "summary": summary, "files": sorted(files)}
        prefix = URL_PREFIXES[repo.repo_type]
        return self._json({"commitUrl": f"{self.url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha,
                           "pullRequestUrl": None})  # fmt: skip

    def _create_branch(self, match, body, entry):
        repo = self._stored(match, entry)
        branch = unquote(match["branch"])
        if branch in repo.branches:
            raise HubError(409, "BranchExists", f"Reference already exists: refs/heads/{branch}")
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        repo.branches[branch] = repo.resolve(start)
        return self._json({})

    def _refs(self, match, body, entry):
        repo = self._stored(match, entry)
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in repo.branches.items()]
        return self._json({"branches": branches, "tags": [], "converts": []})

    def _tree(self, match, body, entry):
        repo = self._stored(match, entry)
        files = repo.commits[repo.resolve(match["rev"])]["files"]
        folder = (match.get("path") or "").strip("/")
        prefix = folder + "/" if folder else ""
        recursive = entry["query"].get("recursive", ["false"])[0].lower() == "true"
        listing, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            listing.append({"type": "file", "path": path, "size": len(files[path]), "oid": git_blob_oid(files[path])})
        listing += [{"type": "directory", "path": name, "oid": "0" * 40} for name in sorted(folders)]
        return self._json(listing)

    def _repo_info(self, match, body, entry):
        repo = self._stored(match, entry)
        sha = repo.resolve(match.get("rev") or "main")
        siblings = [{"rfilename": path} for path in sorted(repo.commits[sha]["files"])]
        return self._json({"id": repo.repo_id, "sha": sha, "private": repo.private, "siblings": siblings,
                           "tags": [], "disabled": False, "gated": False})  # fmt: skip

    def _resolve(self, match, body, entry):
        repo = self._stored(match, entry)
        sha = repo.resolve(match["rev"])
        files = repo.commits[sha]["files"]
        if match["path"] not in files:
            raise HubError(404, "EntryNotFound", f"{match['path']} does not exist at {match['rev']}")
        content = files[match["path"]]
        headers = {"ETag": f'"{git_blob_oid(content)}"', "X-Repo-Commit": sha, "Content-Type": "application/octet-stream",
                   "Content-Length": str(len(content))}  # fmt: skip
        return 200, headers, content
