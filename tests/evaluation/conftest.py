"""Every evaluation test names its hand-written set; the real evaluation/handwritten/ must not leak into them."""

import pytest


@pytest.fixture(autouse=True)
def _no_default_handwritten_set(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("M5_HANDWRITTEN_DIR", str(tmp_path_factory.getbasetemp() / "no-handwritten-set-here"))
