"""`moondream-cpp serve`: thin over moondream_cpp.server.create_app, run by uvicorn."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from moondream_cpp.errors import MoondreamError

from .app import GPU_LAYERS, LOW_RAM, MMPROJ, MODEL, N_CTX, TEXT, THREADS, app, load_model, note


@app.command()
def serve(
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(2020, "--port", min=1, max=65535, help="Port (2020, as Moondream Station)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MOONDREAM_CPP_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on every route but /health."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images", help="Let requests name http(s) "
                                             "image URLs (fetched with a timeout and a size limit)."),
    media_root: Optional[Path] = typer.Option(None, "--media-root", help="Let requests name local image files "
                                              "under this directory."),
    max_body_mb: float = typer.Option(32, "--max-body-mb", min=0.01, help="Largest request body accepted."),
    max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests that may wait; more get 503."),
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    low_ram: bool = LOW_RAM,
):
    """Serve the model over HTTP: /v1/chat/completions (OpenAI), /v1/caption and /v1/query (moondream client),
    /v1/models, /health, and the web demo at /."""
    _serve(model, text, mmproj, host, port, api_key, allow_remote_images, media_root, max_body_mb, max_queue,
           threads, gpu_layers, n_ctx, low_ram, what="the API")


@app.command()
def web(
    model: Optional[str] = MODEL,
    text: Optional[Path] = TEXT,
    mmproj: Optional[Path] = MMPROJ,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port."),
    threads: Optional[int] = THREADS,
    gpu_layers: Optional[int] = GPU_LAYERS,
    n_ctx: Optional[int] = N_CTX,
    low_ram: bool = LOW_RAM,
):
    """The web demo: upload or paste an image, ask questions, streamed answers, captions, timings. Fully offline:
    one page served by the same server as the API."""
    _serve(model, text, mmproj, host, port, None, False, None, 32, 16, threads, gpu_layers, n_ctx, low_ram,
           what="the web demo")


def _serve(model, text, mmproj, host, port, api_key, allow_remote_images, media_root, max_body_mb, max_queue,
           threads, gpu_layers, n_ctx, low_ram, what):
    try:
        import uvicorn

        from moondream_cpp.server import ImagePolicy, ServerConfig, create_app
    except ImportError:
        raise MoondreamError("serve needs the server extra: pip install 'moondream-cpp[server]'") from None
    if media_root is not None and not media_root.is_dir():
        raise MoondreamError(f"--media-root {media_root} is not a directory")
    md = load_model(model, text, mmproj, n_threads=threads, n_gpu_layers=gpu_layers, n_ctx=n_ctx, low_ram=low_ram)
    policy = ImagePolicy(allow_remote=allow_remote_images, media_root=media_root,
                         max_image_bytes=int(max_body_mb * 2**20))
    cfg = ServerConfig(api_key=api_key, max_body_bytes=int(max_body_mb * 2**20), max_queue=max_queue,
                       images=policy)
    base = f"http://{host}:{port}"
    note(f"serving {md.name}: {what} at {base}/ (web demo) and {base}/v1 (OpenAI and moondream clients)"
         f"{', API key required' if api_key else ''}")
    uvicorn.run(create_app(md, cfg), host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
