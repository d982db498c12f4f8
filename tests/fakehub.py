"""A Hugging Face hub stand-in on loopback: the resolve/ routes huggingface_hub downloads from, with Range support,
the hub's ETags (an LFS file's sha256 in X-Linked-Etag; a small file's git blob sha1 in ETag), the commit a revision
resolves to, and faults to order (corrupt bytes, other bytes under the true hashes, a cut connection, a trickle).
Any number of repos, each at any revisions (a tag or branch: "2025-06-21", "main", "refs/pr/1", which huggingface_hub
sends %-quoted); add_dir serves a checkpoint directory."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


LFS_SUFFIXES = (".gguf", ".safetensors", ".bin")  # as the hub's default .gitattributes stores in LFS


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file: what the hub sends as the ETag of a file kept in git itself (not LFS)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    data: bytes
    lfs: bool = True
    corrupt: bool = False  # serve flipped bytes under the true hashes
    served: bytes | None = None  # serve these bytes instead, under the true hashes and size
    cut_after: int | None = None  # close the connection after this many bytes, once
    trickle: float = 0.0  # seconds to sleep per 64 KiB sent
    sha256: str = field(init=False)

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()

    def body(self) -> bytes:
        data = self.data if self.served is None else self.served
        return bytes(b ^ 0xFF for b in data) if self.corrupt else data


class FakeHub:
    def __init__(self):
        self.files: dict[tuple[str, str, str], HubFile] = {}  # (repo, revision, name) -> file
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _find(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                # /{owner}/{repo}/resolve/{revision}/{filename}
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, revision = "/".join(parts[:2]), unquote(parts[3])
                    self.commit = hub.commit(repo, revision)
                    return hub.files.get((repo, revision, unquote("/".join(parts[4:]))))
                return None

            def _headers(self, f: HubFile, start: int):
                body = len(f.body()) - start
                self.send_header("X-Repo-Commit", self.commit)
                if f.lfs:
                    self.send_header("ETag", f'"{git_blob_sha1(b"pointer " + f.sha256.encode())}"')
                    self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                    self.send_header("X-Linked-Size", str(len(f.data)))
                else:
                    self.send_header("ETag", f'"{git_blob_sha1(f.data)}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(body))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                hub.requests.append(("HEAD", self.path, None))
                f = self._find()
                if f is None:
                    return self._missing()
                self.send_response(200)
                self._headers(f, 0)

            def do_GET(self):
                rng = self.headers.get("Range")
                hub.requests.append(("GET", self.path, rng))
                f = self._find()
                if f is None:
                    return self._missing()
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                self.send_response(206 if start else 200)
                self._headers(f, start)
                data = f.body()[start:]
                limit = f.cut_after - start if f.cut_after is not None and f.cut_after > start else None
                if limit is not None:
                    f.cut_after = None  # only the first try is cut
                sent = 0
                try:
                    while sent < len(data):
                        n = 65536 if limit is None else min(65536, limit - sent)
                        if n <= 0:
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(data[sent: sent + n])
                        self.wfile.flush()
                        sent += n
                        if f.trickle:
                            time.sleep(f.trickle)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, revision: str, name: str, data: bytes, **faults) -> HubFile:
        f = HubFile(data, **{"lfs": name.endswith(LFS_SUFFIXES), **faults})
        self.files[(repo, revision, name)] = f
        return f

    def add_dir(self, repo: str, revision: str, directory: Path, names: list[str] | None = None) -> None:
        """Serve files of a local directory (all of them, or `names`) under repo@revision."""
        for name in names or sorted(p.name for p in Path(directory).iterdir() if p.is_file()):
            self.add(repo, revision, name, (Path(directory) / name).read_bytes())

    def commit(self, repo: str, revision: str) -> str:
        """The commit a revision names: a changed file under the revision (a moved tag) makes a new one."""
        state = sorted((n, f.sha256) for (r, v, n), f in self.files.items() if (r, v) == (repo, revision))
        return hashlib.sha1(repr((repo, revision, state)).encode()).hexdigest()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
