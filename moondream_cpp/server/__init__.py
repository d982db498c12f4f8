"""The local HTTP server (extra [server]): OpenAI-compatible and Moondream-Station-compatible routes."""
from .app import ServerConfig, create_app
from .images import ImagePolicy

__all__ = ["create_app", "ServerConfig", "ImagePolicy"]
