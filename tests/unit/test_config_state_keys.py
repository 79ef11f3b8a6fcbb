"""``state_keys``: the keys that seal sessions and task ids, and what check-config says of them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import state_keys_summary
from tests.unit.test_config import Bad, assert_single_problem, base_config, cases, parse

KEY = "s" * 40


def test_state_keys_parse_with_the_first_key_active_by_default(tmp_path: Path) -> None:
    """Keys from the environment and from files; ``active`` defaults to the first one."""
    (tmp_path / "old.key").write_text("o" * 48 + "\n")
    text = base_config(
        append="state_keys:\n  keys:\n"
        "    - {id: new, secret: {env: STATE_KEY}}\n"
        "    - {id: old, secret: {file: old.key}}\n"
    )
    config = parse(text, tmp_path, {"STATE_KEY": KEY})
    assert config.state_keys is not None
    assert config.state_keys.active == "new"
    assert [key.id for key in config.state_keys.keys] == ["new", "old"]
    assert config.state_keys.keys[1].secret.reveal() == "o" * 48
    assert "active 'new' of new, old" in state_keys_summary(config)


def test_without_state_keys_check_config_says_what_holds_and_what_does_not(tmp_path: Path) -> None:
    """No keys: one random key per start; check-config names workers, replicas and restarts."""
    summary = state_keys_summary(parse(base_config(), tmp_path))
    assert "--workers N" in summary and "restart" in summary and "replicas" in summary


@pytest.mark.parametrize(
    "case",
    cases(
        Bad(
            "short-secret",
            14,
            "state_keys.keys[0].secret",
            "at least 32 bytes",
            append="state_keys:\n  keys:\n    - id: a\n      secret: {env: STATE_KEY}\n",
            env={"STATE_KEY": "too-short"},
        ),
        Bad(
            "bad-id",
            13,
            "state_keys.keys[0].id",
            "1 to 32 of A-Z",
            append="state_keys:\n  keys:\n    - id: a.b\n      secret: {env: STATE_KEY}\n",
            env={"STATE_KEY": KEY},
        ),
        Bad(
            "shared-id",
            12,
            "state_keys.keys",
            "share an id",
            append="state_keys:\n  keys:\n"
            "    - {id: a, secret: {env: STATE_KEY}}\n"
            "    - {id: a, secret: {env: STATE_KEY}}\n",
            env={"STATE_KEY": KEY},
        ),
        Bad(
            "unknown-active",
            12,
            "state_keys.active",
            "no state key has id 'b'",
            append="state_keys:\n  active: b\n  keys:\n    - {id: a, secret: {env: STATE_KEY}}\n",
            env={"STATE_KEY": KEY},
        ),
        Bad(
            "inline-secret",
            14,
            "state_keys.keys[0].secret",
            "never written inline",
            append="state_keys:\n  keys:\n    - id: a\n      secret: " + KEY + "\n",
        ),
        Bad("no-keys", 12, "state_keys.keys", "at least one state key", append="state_keys:\n  keys: []\n"),
    ),
)
def test_state_key_problems(tmp_path: Path, case: Bad) -> None:
    """Each mistake is one problem at its file, line and key."""
    assert_single_problem(case, tmp_path)
