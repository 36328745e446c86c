"""API keys for `qrmem serve`: stored hashed, verified, scoped to users, revoked; the migration that
adds their table; `qrmem keys create|list|revoke`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from qrmem.cli import app
from store import ApiKeys, InputError, NotFoundError, Store
from store.migrations import MIGRATIONS

runner = CliRunner()


def test_keys_are_verified_scoped_and_revoked(db: str) -> None:
    keys = ApiKeys(Store(db))
    assert not keys.any_active()
    with pytest.raises(InputError, match="whitespace"):
        keys.create("alice app", [" alice"])  # ids are never rewritten: " alice" is not alice
    alice = keys.create("alice app", ["alice", "alice", "bob"])
    every = keys.create("admin")
    assert alice.key.users == ("alice", "bob") and every.key.users is None
    assert alice.secret.startswith(f"qrm_{alice.key.key_id}_") and alice.secret != every.secret
    found = keys.verify(alice.secret)
    assert found is not None and found.key_id == alice.key.key_id and found.name == "alice app"
    assert found.allows("alice") and found.allows("bob") and not found.allows("carol")
    assert keys.verify(every.secret).allows("anyone")
    tampered = alice.secret[:-1] + ("A" if alice.secret[-1] != "A" else "B")
    for bad in [tampered, alice.secret + "x", f"qrm_{alice.key.key_id}_" + "A" * 43, "", "Bearer x", None, 42]:
        assert keys.verify(bad) is None, bad
    assert keys.any_active()
    revoked = keys.revoke(alice.key.key_id)
    assert revoked.revoked_at is not None and not revoked.active
    assert keys.verify(alice.secret) is None and keys.verify(every.secret) is not None
    assert keys.revoke(alice.key.key_id).revoked_at == revoked.revoked_at  # revoking twice is a no-op
    listed = {k.key_id: k for k in keys.list()}
    assert listed[alice.key.key_id].revoked_at is not None and listed[every.key.key_id].active
    assert [k.key_id for k in keys.list(include_revoked=False)] == [every.key.key_id]
    keys.revoke(every.key.key_id)
    assert not keys.any_active()


def test_only_a_hash_is_stored(db: str) -> None:
    store = Store(db)
    new = ApiKeys(store).create("ci", ["u1"])
    secret_part = new.secret.rsplit("_", 1)[1]
    with store.engine.connect() as conn:
        rows = [tuple(map(str, r)) for r in conn.execute(sa.text("SELECT * FROM api_keys"))]
    assert len(rows) == 1
    assert not any(secret_part in cell for cell in rows[0])
    if not db.startswith("postgresql"):
        store.close()
        for f in Path(db).parent.glob(Path(db).name + "*"):  # the file and its write-ahead log
            assert secret_part.encode() not in f.read_bytes()


def test_bad_key_requests_are_refused(db: str) -> None:
    keys = ApiKeys(Store(db))
    for name, users, match in [("", None, "name"), ("x" * 201, None, "name"), ("ok", [], "non-empty list"),
                               ("ok", "alice", "non-empty list"), ("ok", ["\x00"], "NUL"), ("ok", [" "], "whitespace")]:
        with pytest.raises(InputError, match=match):
            keys.create(name, users)
    with pytest.raises(InputError, match="not a key id"):
        keys.revoke("qrm_abc")
    with pytest.raises(NotFoundError, match="no API key"):
        keys.revoke("0123456789ab")
    assert keys.list() == []


def test_the_key_table_is_added_to_an_existing_store(sqlite_db: str) -> None:
    store = Store(sqlite_db)
    store.counts()
    with store.engine.begin() as conn:  # make it a store from before m004: no table, no record
        conn.execute(sa.text("DROP TABLE api_keys"))
        conn.execute(sa.text("DELETE FROM schema_migrations WHERE name = 'm004_api_keys'"))
    store.close()
    store = Store(sqlite_db)
    assert ApiKeys(store).create("later").key.name == "later"
    with store.engine.connect() as conn:
        names = list(conn.scalars(sa.text("SELECT name FROM schema_migrations")))
    assert names == [name for name, _ in MIGRATIONS] and "m004_api_keys" in names
    assert store.check().ok


def test_cli_keys_create_list_revoke(db: str) -> None:
    res = runner.invoke(app, ["keys", "create", "--db", db, "--name", "bot", "--users", "alice,bob"])
    assert res.exit_code == 0, res.output
    secret = res.stdout.strip()
    assert secret.startswith("qrm_") and "not shown again" in res.stderr
    key = ApiKeys(Store(db)).verify(secret)
    assert key is not None and key.users == ("alice", "bob")
    res = runner.invoke(app, ["keys", "create", "--db", db, "--name", "admin", "--all", "--json"])
    made = json.loads(res.stdout)
    assert made["users"] is None and ApiKeys(Store(db)).verify(made["key"]).users is None
    res = runner.invoke(app, ["keys", "list", "--db", db, "--json"])
    listed = json.loads(res.stdout)
    assert [k["name"] for k in listed] == ["bot", "admin"]
    assert secret not in res.stdout and made["key"] not in res.stdout
    res = runner.invoke(app, ["keys", "revoke", "--db", db, key.key_id])
    assert res.exit_code == 0 and f"revoked key {key.key_id}" in res.stdout
    assert ApiKeys(Store(db)).verify(secret) is None
    assert "revoked" in runner.invoke(app, ["keys", "list", "--db", db]).stdout
    for args, message in [(["--name", "x"], "exactly one of --users"),
                          (["--name", "x", "--all", "--users", "a"], "exactly one of --users"),
                          (["--name", "", "--all"], "needs a name")]:
        res = runner.invoke(app, ["keys", "create", "--db", db, *args])
        assert res.exit_code == 1 and message in res.stderr, res.output
    res = runner.invoke(app, ["keys", "revoke", "--db", db, "ffffffffffff"])
    assert res.exit_code == 1 and res.stderr.startswith("error: no API key")
