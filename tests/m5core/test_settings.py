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
    assert s.redis_url == "redis://flag:2/0"
    assert s.namespace == "from-env"


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


def test_passwords_in_urls_are_masked_for_logs_and_errors():
    from m5core.settings import mask_url

    assert mask_url("redis://default:s3cret@redis.internal:6380/2") == "redis://default:***@redis.internal:6380/2"
    assert mask_url("redis://:s3cret@127.0.0.1/0") == "redis://:***@127.0.0.1/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert "s3cret" not in mask_url("rediss://u:s3cret@h:1/0?ssl_cert_reqs=none")


def test_the_cli_names_an_unreachable_redis_without_its_password(monkeypatch, capsys):
    from m5cli.main import main

    monkeypatch.setenv("M5_REDIS_URL", "redis://default:s3cret@127.0.0.1:1/0")
    monkeypatch.setenv("M5_STORE", "redis")
    monkeypatch.setenv("M5_REDIS_TIMEOUT_S", "0.5")
    rc = main(["index", "rollback"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot reach Redis at redis://default:***@127.0.0.1:1/0" in err
    assert "s3cret" not in err


def test_the_cli_says_how_to_get_the_password_when_redis_refuses_it(redis_url, monkeypatch, capsys):
    from urllib.parse import urlsplit

    from m5cli.main import main

    parts = urlsplit(redis_url)
    monkeypatch.setenv("M5_REDIS_URL", f"redis://:wrong-password@{parts.hostname}:{parts.port}/0")
    monkeypatch.setenv("M5_STORE", "redis")
    rc = main(["index", "rollback"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "refused the password" in err
    assert "deploy/local/services.sh url redis" in err
    assert "wrong-password" not in err


def test_kafka_addresses_carry_credentials_and_logs_never_show_them():
    from m5core.settings import kafka_client_options, mask_url

    assert kafka_client_options("h1:9092, h2:9092") == {"bootstrap_servers": ["h1:9092", "h2:9092"]}
    opts = kafka_client_options("kafka://m5:p%40ss@h1:9092,h2:9092?mechanism=SCRAM-SHA-512")
    assert opts["bootstrap_servers"] == ["h1:9092", "h2:9092"]
    assert opts["security_protocol"] == "SASL_PLAINTEXT"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "m5"
    assert opts["sasl_plain_password"] == "p@ss"
    assert kafka_client_options("kafka+ssl://u:p@h:9093")["security_protocol"] == "SASL_SSL"
    assert mask_url("kafka://m5:s3cret@h1:9092,h2:9092") == "kafka://m5:***@h1:9092,h2:9092"
    with pytest.raises(ValueError, match="needs user:password@") as e:
        kafka_client_options("kafka://m5@h1:9092")
    with pytest.raises(ValueError, match="scheme 'http'") as e:
        kafka_client_options("http://u:s3cret@h1:9092")
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["index", "run", "--encode-retries", "0"], "--encode-retries"),  # 0 attempts would never encode a batch
        (["index", "run", "--store-retries", "0"], "--store-retries"),
        (["index", "run", "--max-batch", "0"], "--max-batch"),
        (["serve", "--workers", "0"], "--workers"),
        (["serve", "--max-k", "0"], "--max-k"),
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_naming_the_flag(argv, flag, capsys):
    from m5cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} / M5_{flag[2:].replace('-', '_').upper()}" in err
    assert "greater than or equal to 1" in err
