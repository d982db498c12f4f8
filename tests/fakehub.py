"""A Hugging Face hub stand-in on loopback: the resolve/ routes huggingface_hub downloads from, with Range support,
LFS-style sha256 ETags, and faults to order (corrupt bytes, a connection cut mid-file, a slow trickle)."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubFile:
    data: bytes
    corrupt: bool = False  # serve flipped bytes under the true sha256
    cut_after: int | None = None  # close the connection after this many bytes, once
    trickle: float = 0.0  # seconds to sleep per 64 KiB sent
    sha256: str = field(init=False)

    def __post_init__(self):
        self.sha256 = hashlib.sha256(self.data).hexdigest()


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
                    return hub.files.get(("/".join(parts[:2]), parts[3], "/".join(parts[4:])))
                return None

            def _headers(self, f: HubFile, start: int):
                body = len(f.data) - start
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{f.sha256}"')
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
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
                data = bytes(b ^ 0xFF for b in f.data) if f.corrupt else f.data
                data = data[start:]
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
        f = HubFile(data, **faults)
        self.files[(repo, revision, name)] = f
        return f

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
