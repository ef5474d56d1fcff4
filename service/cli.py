"""`m5 serve`: uvicorn (uvloop + httptools) over service.app, settings passed to workers by M5_* env."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile

from m5core.settings import add_settings_arguments, settings_from_args
from service.settings import LOOPBACK, ServiceSettings, exposure_error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve embeddings, query embeddings and kNN search over HTTP")
    add_settings_arguments(p, ServiceSettings)
    p.set_defaults(func=_serve, parser=p)


def export_env(s: ServiceSettings) -> None:
    """Workers are fresh processes: hand them the resolved settings through the environment."""
    for name, value in s.model_dump().items():
        if value is None:
            os.environ.pop(f"M5_{name.upper()}", None)
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        os.environ[f"M5_{name.upper()}"] = str(value)


def _serve(args) -> int:
    import uvicorn

    s = settings_from_args(ServiceSettings, args, args.parser)
    if (why := exposure_error(s)) is not None:
        args.parser.exit(2, f"m5 serve: error: {why}\n")
    if s.insecure and s.api_key is None and s.host not in LOOPBACK:
        logging.getLogger("m5.serve").warning(
            "SERVING WITHOUT AUTHENTICATION on %s:%d (--insecure): every embedding is readable by anyone who can reach it", s.host, s.port
        )
    export_env(s)
    mp_dir = None
    if s.workers > 1:
        # Every worker writes its metrics here; /metrics aggregates them (prometheus_client multiprocess mode).
        mp_dir = tempfile.mkdtemp(prefix="m5-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    try:
        uvicorn.run(
            "service.app:app_factory",
            factory=True,
            host=s.host,
            port=s.port,
            workers=s.workers,
            loop="uvloop",
            http="httptools",
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        if mp_dir:
            shutil.rmtree(mp_dir, ignore_errors=True)
    return 0
