import argparse

import pytest

from m5core.settings import StoreConfig, add_settings_arguments, settings_from_args


def _parser():
    p = argparse.ArgumentParser(prog="t")
    add_settings_arguments(p, StoreConfig)
    return p


def test_flag_wins_over_env(monkeypatch):
    monkeypatch.setenv("M5_REDIS_URL", "redis://env:1/0")
    monkeypatch.setenv("M5_NAMESPACE", "from-env")
    p = _parser()
    s = settings_from_args(StoreConfig, p.parse_args(["--redis-url", "redis://flag:2/0"]), p)
    assert s.redis_url == "redis://flag:2/0" and s.namespace == "from-env"


def test_bad_choice_exits_2_naming_the_flag(capsys):
    p = _parser()
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--store", "postgres"])
    assert e.value.code == 2
    assert "--store" in capsys.readouterr().err


def test_bad_env_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("M5_STORE", "postgres")
    p = _parser()
    with pytest.raises(SystemExit) as e:
        settings_from_args(StoreConfig, p.parse_args([]), p)
    assert e.value.code == 2
    assert "M5_STORE" in capsys.readouterr().err


def test_unknown_key_is_an_error():
    with pytest.raises(Exception, match="redis_ur"):
        StoreConfig(redis_ur="x")


def test_help_reads_attribute_docstrings():
    assert "store of record" in _parser().format_help()
