"""`m5 serve`: uvicorn (uvloop + httptools) over service.app, settings passed to workers by M5_* env."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from m5core.settings import add_settings_arguments, settings_from_args
from service.arrival import StampedHttpToolsProtocol
from service.auth import SCOPES, KeysFileError, digest, new_key, parse_keys, read_keys_file, write_keys_file
from service.router import RouterSettings
from service.settings import LOOPBACK, ServiceSettings, exposure_error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve embeddings, query embeddings and kNN search over HTTP")
    add_settings_arguments(p, ServiceSettings)
    p.set_defaults(func=_serve, parser=p)
    r = sub.add_parser("router", help="one address in front of service shards: fans searches out, merges, routes GETs by partition")
    add_settings_arguments(r, RouterSettings)
    r.set_defaults(func=_router, parser=r)
    k = sub.add_parser("keys", help="issue, list and revoke the service's API keys (a keys file of hashes)")
    ksub = k.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)
    add = ksub.add_parser("add", help="make a key, print it once, store its hash")
    add.add_argument("--name", required=True, help="who holds it (shown in metrics and logs, never the key)")
    add.add_argument("--scopes", default="read", help=f"comma-separated, of {', '.join(SCOPES)} (default read)")
    add.add_argument("--rate-per-s", type=float, default=0.0, help="its requests a second per worker (default: the service's M5_KEY_RATE_PER_S)")
    add.add_argument("--burst", type=float, default=0.0, help="its bucket size (default: the service's)")
    rm = ksub.add_parser("remove", help="revoke a key by name (served keys follow within a second)")
    rm.add_argument("--name", required=True)
    ls = ksub.add_parser("list", help="names, scopes and limits (the file holds no key)")
    for q in (add, rm, ls):
        default = Path(os.environ.get("M5_API_KEYS_FILE", ".m5/keys.json"))
        q.add_argument("--file", type=Path, default=default, help="keys file (default $M5_API_KEYS_FILE, else .m5/keys.json)")
        q.set_defaults(func=_keys, parser=q)


def _keys(args) -> int:
    """Rotation: `add` a new key, move the client to it, `remove` the old one; the service follows the file."""
    try:
        keys = read_keys_file(args.file) if args.file.exists() or args.keys_command != "add" else []
        if args.keys_command == "list":
            for k in keys:
                print(f"{k.name}\tscopes={','.join(sorted(k.scopes))}\trate_per_s={k.rate_per_s or 'default'}\tburst={k.burst or 'default'}")
            return 0
        if args.keys_command == "remove":
            if args.name not in {k.name for k in keys}:
                args.parser.exit(2, f"m5 keys remove: error: no key named {args.name!r} in {args.file}\n")
            write_keys_file(args.file, [k for k in keys if k.name != args.name])
            print(f"removed {args.name} from {args.file}")
            return 0
        if args.name in {k.name for k in keys}:
            why = f"{args.file} already has a key named {args.name!r}: to rotate, add the new key under a new name, then remove this one"
            args.parser.exit(2, f"m5 keys add: error: {why}\n")
        secret = new_key()
        entry = {"name": args.name, "sha256": digest(secret), "scopes": [x.strip() for x in args.scopes.split(",") if x.strip()]}

        (added,) = parse_keys({"keys": [{**entry, "rate_per_s": args.rate_per_s, "burst": args.burst}]}, "--name/--scopes/--rate-per-s/--burst")
        write_keys_file(args.file, [*keys, added])
    except KeysFileError as exc:
        args.parser.exit(2, f"m5 keys {args.keys_command}: error: {exc}\n")
    print(f"added {added.name} ({','.join(sorted(added.scopes))}) to {args.file}; the key, shown once:", file=sys.stderr)
    print(secret)
    return 0


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
    s = settings_from_args(ServiceSettings, args, args.parser)
    if (why := exposure_error(s)) is not None:
        args.parser.exit(2, f"m5 serve: error: {why}\n")
    if s.api_keys_file is not None:
        try:
            read_keys_file(s.api_keys_file)  # each worker reads it again; a bad file stops here, named
        except KeysFileError as exc:
            args.parser.exit(2, f"m5 serve: error: --api-keys-file: {exc}\n")
    if s.insecure and s.api_key is None and s.api_keys_file is None and s.host not in LOOPBACK:
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
        # httptools, each request stamped on arrival (queue-wait shedding)
        _run_uvicorn("service.app:app_factory", s.host, s.port, s.workers, StampedHttpToolsProtocol)
    finally:
        if mp_dir:
            shutil.rmtree(mp_dir, ignore_errors=True)
    return 0


def _router(args) -> int:
    """The shards check the callers' keys (the router passes credentials through and holds none)."""
    s = settings_from_args(RouterSettings, args, args.parser)
    if not s.shards:
        args.parser.exit(2, "m5 router: error: --shards is required (PARTITIONS=URL[,URL...], space-separated)\n")
    export_env(s)
    _run_uvicorn("service.router:app_factory", s.host, s.port, s.workers, "httptools")
    return 0


def _run_uvicorn(factory: str, host: str, port: int, workers: int, http) -> None:
    """uvicorn with uvloop, no access log, 10 s to drain on shutdown; the workers build the app from M5_* (`export_env`)."""
    import uvicorn

    uvicorn.run(
        factory,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=http,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )
