"""Property-based API test: whatever schemathesis generates from the OpenAPI, no 5xx and responses conform."""

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings

from m5core.stores.local import LocalStore
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import ENC, seed_records


def _app(tmp_dir):
    s = ServiceSettings(store="local", events="local", local_store_path=tmp_dir / "s.sqlite", local_events_dir=tmp_dir / "ev")
    store = LocalStore(s.local_store_path)
    seed_records(store)
    return create_app(s, encoder=ENC, store=store, follow_feed=False)


# Built at import: schemathesis parametrizes from the loaded schema (its fixture loader does not work with
# this pytest). The store is a throwaway sqlite file; schemathesis runs the app's lifespan itself.
_TMP = tempfile.TemporaryDirectory(prefix="m5-schemathesis-")
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(Path(_TMP.name)))


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_conformance(case):
    # Every check but positive_data_acceptance: an all-zero vector is schema-valid and still refused
    # (it has no direction), and an unknown ASIN is a 404 by design.
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])
