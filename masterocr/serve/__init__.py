"""HTTP serving: `masterocr serve` (FastAPI + uvicorn), dynamic batching, limits, and the page at `/`.

    from masterocr.serve import ServeConfig, create_app
    app = create_app(ServeConfig(max_batch=32), recognizer=masterocr.load())

The web stack is imported on first use, so the command line can list `serve` without loading it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from masterocr.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'masterocr.serve' has no attribute {name!r}")
