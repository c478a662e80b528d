"""`masterocr serve`: the HTTP API and the web page (see masterocr/serve)."""

from __future__ import annotations

import argparse
import os
import sys

from masterocr.cli.common import non_negative_int, positive_int
from masterocr.cli.read import add_precision_argument


def register(subparsers) -> None:
    from masterocr.serve.backends import BACKENDS

    p = subparsers.add_parser(
        "serve", help="serve the model over HTTP (API + web page)",
        description="Serve a model over HTTP: POST /v1/read (multipart files or JSON base64), GET /v1/models, "
                    "/healthz, /readyz, API docs at /docs and a web page at /. Concurrent requests are batched. "
                    "Binds to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="bundled model name, .safetensors or .ckpt (default: the bundled model)")
    p.add_argument("--backend", default="torch", choices=sorted(BACKENDS), help="inference backend (default: torch)")
    add_precision_argument(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=non_negative_int, default=8000)
    p.add_argument("--max-batch", type=positive_int, default=64, metavar="N", help="images per model call (default: 64)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, metavar="MS",
                   help="how long the first image of a batch waits for more (default: 10)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                   help="largest request body; larger ones get 413 (default: 10)")
    p.add_argument("--max-files", type=positive_int, default=64, metavar="N",
                   help="most images in one request; more get 413 (default: 64)")
    p.add_argument("--max-queue", type=positive_int, default=None, metavar="N",
                   help="images waiting for the model before new requests get 503 "
                        "(default: max(8 x max-batch, 2 x max-files))")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in this environment variable (X-API-Key header) on /v1/*")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level; 'warning' silences the access log (default: info)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from masterocr.serve.app import ServeConfig, create_app
    from masterocr.serve.backends import load_recognizer, model_display_name

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: choose 1-65535")
    config = ServeConfig(model_name=model_display_name(args.model), backend=args.backend, max_batch=args.max_batch,
                         batch_wait_ms=args.batch_wait_ms, max_upload_mb=args.max_upload_mb,
                         max_files=args.max_files, max_queue=args.max_queue, api_key=api_key)
    server: uvicorn.Server | None = None

    def stop_on_load_error(message: str) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(config, loader=lambda: load_recognizer(args.model, args.backend, precision=args.precision),
                     on_load_error=stop_on_load_error)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5))
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"masterocr serve: warning: listening on {args.host} without an API key: anyone who can reach "
              "this address can use the model (--api-key-env VAR requires one)", file=sys.stderr)
    print(f"masterocr serve: {config.model_name} ({args.backend}) on http://{args.host}:{args.port}/ "
          f"(API docs at /docs{', API key required' if api_key else ''})", file=sys.stderr)
    server.run()
    error = app.state.service.error
    if error:
        print(f"masterocr serve: error: {error}", file=sys.stderr)
        return 1
    return 0
