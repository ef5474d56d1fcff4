"""Root fixtures. Real services come from tests/fixtures/services.py, the trained bundle from
tests/fixtures/bundle.py; both start what they need with the project's own scripts."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.bundle"]
