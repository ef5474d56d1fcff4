"""Named, scoped, hashed API keys: 401 without a key, 403 for a wrong scope, 429 per key, rotation without a
restart, and per-key metrics that never show the key."""

import json

import pytest

from m5cli.main import main
from service.auth import KeyRing, TokenBucket, digest, read_keys_file

SEARCH = {"query": "running shoes", "k": 2}


def add_key(path, capsys, name: str, *flags: str) -> str:
    """`m5 keys add`, as an operator runs it: the key is printed once, on stdout."""
    assert main(["keys", "add", "--file", str(path), "--name", name, *flags]) == 0
    return capsys.readouterr().out.strip()


def metric(text: str, line_start: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


async def test_keys_are_named_scoped_and_stored_hashed(api, tmp_path, capsys):
    keys = tmp_path / "keys.json"
    reader = add_key(keys, capsys, "search-team")
    admin = add_key(keys, capsys, "ops", "--scopes", "read,admin")
    stored = keys.read_text()
    assert reader not in stored
    assert admin not in stored
    assert digest(reader) in stored
    assert keys.stat().st_mode & 0o077 == 0
    h = await api(api_keys_file=keys)
    assert (await h.client.post("/search", json=SEARCH)).status_code == 401
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": "m5_wrong"})).status_code == 401
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": reader})).status_code == 200
    assert (await h.client.get("/asin/B000000001/embedding", headers={"authorization": f"Bearer {reader}"})).status_code == 200
    r = await h.client.post("/admin/keys/reload", headers={"x-api-key": reader})
    assert r.status_code == 403
    assert "lacks the admin scope" in r.json()["detail"]
    r = await h.client.post("/admin/keys/reload", headers={"x-api-key": admin})
    assert r.status_code == 200
    assert r.json()["keys"] == 2
    assert (await h.client.post("/admin/model/check", headers={"x-api-key": admin})).json()["switched"] is False
    assert (await h.client.get("/healthz")).status_code == 200  # probes and scrapes need no key
    text = (await h.client.get("/metrics")).text
    assert metric(text, 'm5_http_requests_by_key_total{key="search-team",status="200"}') == 2
    assert metric(text, 'm5_http_requests_by_key_total{key="search-team",status="403"}') == 1
    assert reader not in text
    assert admin not in text


async def test_each_key_has_its_own_rate_limit(api, tmp_path, capsys):
    keys = tmp_path / "keys.json"
    slow = add_key(keys, capsys, "batch-job", "--rate-per-s", "0.5", "--burst", "2")
    fast = add_key(keys, capsys, "search-team")
    h = await api(api_keys_file=keys)
    codes = [(await h.client.post("/search", json=SEARCH, headers={"x-api-key": slow})).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = await h.client.post("/search", json=SEARCH, headers={"x-api-key": slow})
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 2
    assert "batch-job" in r.json()["detail"]
    assert all([(await h.client.post("/search", json=SEARCH, headers={"x-api-key": fast})).status_code == 200 for _ in range(20)])
    text = (await h.client.get("/metrics")).text
    assert metric(text, 'm5_http_requests_by_key_total{key="batch-job",status="429"}') == 2


def test_token_bucket_refills_at_its_rate():
    b = TokenBucket(rate=10.0, burst=2.0, at=0.0)
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == 0.0
    assert b.take(0.0) == pytest.approx(0.1)
    assert b.take(0.05) == pytest.approx(0.05)
    assert b.take(0.1) == 0.0


async def test_keys_rotate_without_a_restart(api, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(KeyRing, "RECHECK_S", 0.0)  # the file is looked at on every request instead of once a second
    keys = tmp_path / "keys.json"
    old = add_key(keys, capsys, "search-2025")
    h = await api(api_keys_file=keys)
    new = add_key(keys, capsys, "search-2026")
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": new})).status_code == 200
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": old})).status_code == 200
    assert main(["keys", "remove", "--file", str(keys), "--name", "search-2025"]) == 0
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": old})).status_code == 401
    keys.write_text("{not json")  # a botched edit keeps the keys last read: nobody is locked out, nobody let in
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": new})).status_code == 200
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": old})).status_code == 401


async def test_the_environment_key_holds_every_scope(api):
    h = await api(api_key="s3cret")
    assert (await h.client.post("/admin/keys/reload", headers={"x-api-key": "s3cret"})).status_code == 200
    assert (await h.client.post("/search", json=SEARCH, headers={"x-api-key": "s3cret"})).status_code == 200


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"name": "a b", "sha256": "0" * 64, "scopes": ["read"]}, "keys[0].name"),
        ({"name": "a", "sha256": "plain-text-key", "scopes": ["read"]}, "keys[0].sha256"),
        ({"name": "a", "sha256": "0" * 64, "scopes": ["write"]}, "keys[0].scopes"),
        ({"name": "a", "sha256": "0" * 64, "scopes": ["read"], "rate_per_s": -1}, "keys[0].rate_per_s"),
    ],
)
def test_a_bad_keys_file_is_refused_naming_the_field(tmp_path, capsys, entry, field):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        read_keys_file(keys)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--api-keys-file", str(keys), "--port", "1"])
    assert e.value.code == 2
    assert field in capsys.readouterr().err


def test_keys_cli_refuses_a_duplicate_name_and_an_unknown_one(tmp_path, capsys):
    keys = tmp_path / "keys.json"
    add_key(keys, capsys, "a")
    with pytest.raises(SystemExit) as e:
        main(["keys", "add", "--file", str(keys), "--name", "a"])
    assert e.value.code == 2
    assert "already has a key named 'a'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["keys", "remove", "--file", str(keys), "--name", "b"])
    assert e.value.code == 2
    assert main(["keys", "list", "--file", str(keys)]) == 0
    assert "a\tscopes=read" in capsys.readouterr().out
