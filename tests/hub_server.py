"""A local Hugging Face hub on 127.0.0.1 for download tests: the real huggingface_hub client talks to it.

It implements what the client asks of `/{repo_id}/resolve/{revision}/{path}` (HEAD and GET): the headers
`X-Repo-Commit`, `ETag` (and `X-Linked-Etag` / `X-Linked-Size` like the hub's LFS files), `Content-Length`,
`Accept-Ranges`, `Range` requests answered with 206 + `Content-Range`, and the hub's error codes
(`X-Error-Code: RepoNotFound` / `EntryNotFound`). Any other path serves `plain[path]` as a plain web file (the
taesdv.pth on GitHub). `drop_after[path] = n` cuts the first GET of that file after n bytes, as a network
failure would, so a test can watch the client resume with a Range request; `announce_size[path] = n` announces a
size the body does not have.

A value may also be a `pathlib.Path`: the file is served from disk in chunks (the stand-in hub of
`bench/standin_hub.py` serves gigabytes this way), its ETag made from its size and modification time.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 8 * 2**20


def _size(content: bytes | Path) -> int:
    return content.stat().st_size if isinstance(content, Path) else len(content)


def _etag(content: bytes | Path) -> str:
    if isinstance(content, Path):
        stat = content.stat()
        return hashlib.sha256(f"{content.name}/{stat.st_size}/{stat.st_mtime_ns}".encode()).hexdigest()
    return hashlib.sha256(content).hexdigest()


def _write(handler: BaseHTTPRequestHandler, content: bytes | Path, start: int, count: int | None = None) -> None:
    """Send `count` bytes (default: to the end) of `content` from `start`."""
    if not isinstance(content, Path):
        handler.wfile.write(content[start:] if count is None else content[start:start + count])
        return
    left = _size(content) - start if count is None else count
    with open(content, "rb") as file:
        file.seek(start)
        while left > 0:
            block = file.read(min(CHUNK, left))
            if not block:
                break
            handler.wfile.write(block)
            left -= len(block)


class LocalHub:
    def __init__(self, files: dict[tuple[str, str], bytes | Path], plain: dict[str, bytes | Path] | None = None):
        self.files = dict(files)  # (repo_id, path in repo) -> content (bytes, or a file to serve)
        self.plain = dict(plain or {})  # URL path -> content
        self.drop_after: dict[str, int] = {}  # path in repo or URL path -> bytes sent before the cut (first GET)
        self.announce_size: dict[str, int] = {}  # path in repo -> a size to announce that the body does not have
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _find(self, path: str):
        """(content, key) for a request path, or (None, error code)."""
        if "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            _revision, _, file_path = rest.partition("/")
            if not any(repo == repo_id for repo, _ in self.files):
                return None, "RepoNotFound"
            content = self.files.get((repo_id, file_path))
            return (content, file_path) if content is not None else (None, "EntryNotFound")
        content = self.plain.get(path)
        return (content, path) if content is not None else (None, "NotFound")

    def _serve(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(handler.path.split("?", 1)[0])
        byte_range = handler.headers.get("Range")
        self.requests.append((handler.command, path, byte_range))
        content, key = self._find(path)
        if content is None:
            handler.send_response(404 if key != "RepoNotFound" else 401)
            handler.send_header("X-Error-Code", key)
            handler.send_header("X-Repo-Commit", COMMIT)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        etag = _etag(content)
        size = _size(content)
        start = 0
        if byte_range and byte_range.startswith("bytes="):
            start = int(byte_range[len("bytes="):].split("-", 1)[0] or 0)
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{etag}"')
        handler.send_header("X-Linked-Etag", f'"{etag}"')
        handler.send_header("X-Linked-Size", str(self.announce_size.get(key, size)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.send_header("Content-Type", "application/octet-stream")
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        handler.send_header("Content-Length", str(size - start))
        cut = None if head or start else self.drop_after.pop(key, None)
        if cut is not None:
            handler.send_header("Connection", "close")
        handler.end_headers()
        if head:
            return
        try:
            if cut is not None:
                _write(handler, content, start, cut)
                handler.wfile.flush()
                handler.close_connection = True
                return
            _write(handler, content, start)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (Ctrl-C of a download)
            handler.close_connection = True
