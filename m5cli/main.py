"""`m5`: the front door. Imports the components it starts; nothing imports it.

Each component registers its own subcommands (`<component>/cli.py: register(subparsers)`) and
keeps heavy imports (torch, onnxruntime) inside the command functions, so `m5 --help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from catalog import cli as catalog_cli
from evaluation import cli as eval_cli
from indexer import cli as indexer_cli
from loadtests import cli as loadtest_cli
from m5cli import demo
from m5core.settings import FeedConfig, M5Settings, StoreConfig, mask_url
from service import cli as service_cli
from trainer import cli as trainer_cli

# What starts each backing service, for errors that name it instead of a traceback.
START_HINT = {
    "redis": "deploy/local/services.sh start redis",
    "kafka": "deploy/local/services.sh start kafka",
    "prometheus": "deploy/local/services.sh start prometheus",
}


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage on an error; keep it to one line naming the flag."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="m5", description="Product representations: trained, indexed and served.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    demo.register(sub)
    service_cli.register(sub)
    indexer_cli.register(sub)
    trainer_cli.register(sub)
    catalog_cli.register(sub)
    eval_cli.register(sub)
    loadtest_cli.register(sub)
    return parser


def _configured(cls: type[M5Settings], name: str) -> str:
    """A setting as the failed command saw it (M5_* environment or the default), for the error message."""
    try:
        return str(getattr(cls(), name))
    except ValidationError:
        return str(cls.model_fields[name].default)


def _unavailable(exc: BaseException) -> str | None:
    """A one-line message for a backing service that is not there, or None."""
    name = type(exc).__name__
    module = type(exc).__module__
    if module.startswith("redis") and name in {"AuthenticationError", "AuthenticationWrongNumberOfArgsError"}:
        url = mask_url(_configured(StoreConfig, "redis_url"))
        return f"Redis at {url} refused the password ({exc}); for the local server: export M5_REDIS_URL=$(deploy/local/services.sh url redis)"
    if module.startswith("redis") and name in {"ConnectionError", "TimeoutError"}:
        url = mask_url(_configured(StoreConfig, "redis_url"))
        return f"cannot reach Redis at {url} ({exc}); start it with `{START_HINT['redis']}`"
    if module.startswith("kafka") and name in {"NoBrokersAvailable", "KafkaTimeoutError"}:
        boot = mask_url(_configured(FeedConfig, "kafka_bootstrap"))
        return f"cannot reach Kafka at {boot} ({name}); start it with `{START_HINT['kafka']}`"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the front door turns known failures into one line
        msg = _unavailable(exc)
        if msg is None:
            raise
        print(f"m5: error: {msg}", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
