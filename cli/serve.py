"""`moondream-cpp serve` and `web`: thin over moondream_cpp.server.create_app, run by uvicorn. Who can reach the
server and what each option opens: docs/security.md."""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import List, Optional

import typer

from moondream_cpp.errors import MoondreamError
from moondream_cpp.settings import MAX_PARALLEL

from .app import GPU_LAYERS, LOW_RAM, MAX_CROPS, MMPROJ, MODEL, N_CTX, TEXT, THREADS, about, app, load_model, note

HOST = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default; any other needs --api-key).")
API_KEY = typer.Option(None, "--api-key", envvar="MOONDREAM_CPP_API_KEY", help="Require 'Authorization: Bearer KEY' "
                       "on /v1/*; the web page asks for it.")
ALLOWED_HOST = typer.Option(None, "--allowed-host", help="Another name the server answers to in the Host header "
                            "(besides localhost and its addresses), e.g. behind a reverse proxy; repeatable; '*' "
                            "turns the DNS-rebinding guard off.")
ALLOWED_ORIGIN = typer.Option(None, "--allowed-origin", help="A web origin (https://app.example) whose pages may "
                              "call the API from the browser; repeatable; '*' allows every site.")


@app.command()
def serve(
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    host: str = HOST,
    port: int = typer.Option(2020, "--port", min=1, max=65535, help="Port (2020, as Moondream Station)."),
    api_key: Optional[str] = API_KEY,
    allowed_host: Optional[List[str]] = ALLOWED_HOST,
    allowed_origin: Optional[List[str]] = ALLOWED_ORIGIN,
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images", help="Let requests name http(s) "
                                             "image URLs of public addresses (fetched with a deadline and a size "
                                             "limit)."),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Let requests name local image files "
                                              "under this directory."),
    max_body_mb: float = typer.Option(32, "--max-body-mb", min=0.01, help="Largest request body accepted."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests that may wait; more get 503."),
    parallel: int = typer.Option(1, "--parallel", "-np", min=1, max=MAX_PARALLEL, help="Answer up to N requests "
                                 "together (continuous batching: each step decodes one token of every answer). "
                                 "Each holds its own KV cache of --n-ctx positions, so the KV memory is N times one "
                                 "answer's: a full-size moondream (24 layers x 2048) takes 384 MiB per sequence at "
                                 "n_ctx 2048 with the f16 cache, 102 MiB at --low-ram's 1024 q8_0."),
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
):
    """Serve the model over HTTP: /v1/chat/completions (OpenAI), /v1/caption, /v1/query, /v1/detect and /v1/point
    (moondream client), /v1/models, /v1/status, /health, and the web demo at /. --max-crops is also the most a request
    may ask for."""
    _serve(model, text, mmproj, host, port, api_key, allowed_host, allowed_origin, allow_remote_images, media_root,
           max_body_mb, max_queue, threads, gpu_layers, n_ctx, max_crops, low_ram, what="the API", parallel=parallel)


@app.command()
def web(
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    host: str = HOST,
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port."),
    api_key: Optional[str] = API_KEY,
    allowed_host: Optional[List[str]] = ALLOWED_HOST,
    allowed_origin: Optional[List[str]] = ALLOWED_ORIGIN,
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    max_crops: Optional[int] = MAX_CROPS,
    low_ram: bool = LOW_RAM,
):
    """The web demo: upload or paste an image, ask questions, streamed answers, captions, timings, and with a 2025
    model boxes and points drawn on the picture. Fully offline: one page served by the same server as the API."""
    _serve(model, text, mmproj, host, port, api_key, allowed_host, allowed_origin, False, None, 32, 16, threads,
           gpu_layers, n_ctx, max_crops, low_ram, what="the web demo")


def _return_freed_memory() -> None:
    """glibc raises its mmap threshold after each large free (up to 32 MB), so request-sized buffers are then taken
    from the heap and kept after they are freed: RSS stays at its peak (+350 MB after the attack run). A fixed 1 MB
    threshold, as MALLOC_MMAP_THRESHOLD_ sets it, hands them back to the system when freed."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):  # not glibc
            pass


def _serve(model, text, mmproj, host, port, api_key, allowed_host, allowed_origin, allow_remote_images, media_root,
           max_body_mb, max_queue, threads, gpu_layers, n_ctx, max_crops, low_ram, what, parallel=1):
    try:
        import uvicorn

        from moondream_cpp.server import ImagePolicy, ServerConfig, create_app
        from moondream_cpp.server.guard import is_loopback
    except ImportError:
        raise MoondreamError("serve needs the server extra: pip install 'moondream-cpp[server]'") from None
    if not is_loopback(host) and not api_key:
        # refused, not warned: a LAN-wide server without a key lets every device there use the model (and
        # --media-root's files); a warning scrolls by unseen
        raise typer.BadParameter(f"{host} is reachable from other machines: set --api-key KEY (or "
                                 "MOONDREAM_CPP_API_KEY) to serve there, or bind 127.0.0.1", param_hint="'--host'")
    if media_root is not None and not media_root.is_dir():
        raise MoondreamError(f"--media-root {media_root} is not a directory")
    md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram,
                    max_crops=max_crops, n_parallel=parallel)
    policy = ImagePolicy(allow_remote=allow_remote_images, media_root=media_root,
                         max_image_bytes=int(max_body_mb * 2**20))
    cfg = ServerConfig(api_key=api_key, max_body_bytes=int(max_body_mb * 2**20), max_queue=max_queue,
                       images=policy, host=host, allowed_hosts=tuple(allowed_host or ()),
                       allowed_origins=tuple(allowed_origin or ()))
    _return_freed_memory()
    base = f"http://{host}:{port}"
    note(f"serving {about(md)}: {what} at {base}/ (web demo) and {base}/v1 (OpenAI and moondream clients)"
         f"{', API key required' if api_key else ''}")
    if parallel > 1:
        note(f"{parallel} requests answered together, each with a KV cache of {md.n_ctx} positions "
             f"({md.kv_cache_bytes() / 2**20:.0f} MiB in all)")
    # connections at once (each may be sending a body of up to --max-body-mb): the queue, those decoding (one more for
    # each sequence past the first), and some room for /health and the page; uvicorn answers more with 503
    uvicorn.run(create_app(md, cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                limit_concurrency=2 * max_queue + parallel - 1 + 16)
