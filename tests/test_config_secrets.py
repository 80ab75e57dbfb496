"""The upstream secret must be the server's own: never the app's public JWT secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from engine.config import ConfigError, Settings, generate_missing_secrets

JWT = "jwt-secret-0123456789abcdef0123456789"
ADMIN = "admin-key-0123456789abcdef0123456789"
TTT = "ttt-secret-0123456789abcdef0123456789"

REFUSED = {
    "upstream secret from the shared alias": (
        {"ENGINE_SHARED_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN},
        ["TTT_SHARED_SECRET", "ENGINE_SHARED_SECRET"],
    ),
    "shared alias for the upstream, another JWT secret": (
        {"ENGINE_JWT_SECRET": JWT, "ENGINE_SHARED_SECRET": TTT, "ENGINE_ADMIN_KEY": ADMIN},
        ["TTT_SHARED_SECRET", "ENGINE_SHARED_SECRET"],
    ),
    "upstream secret equal to the JWT secret": (
        {"JWT_SECRET": JWT, "TTT_SHARED_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN},
        ["TTT_SHARED_SECRET", "JWT_SECRET"],
    ),
    "upstream secret equal to the admin key": (
        {"ENGINE_JWT_SECRET": JWT, "TTT_SHARED_SECRET": ADMIN, "ADMIN_API_KEY": ADMIN},
        ["TTT_SHARED_SECRET", "ADMIN_API_KEY"],
    ),
    "upstream secret missing": (
        {"ENGINE_JWT_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN},
        ["TTT_SHARED_SECRET"],
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_outside_dev(name: str) -> None:
    env, named = REFUSED[name]
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)
    message = str(refused.value)
    assert "\n" not in message
    for variable in named:
        assert variable in message
    assert JWT not in message and ADMIN not in message  # names, never values


def test_three_distinct_secrets_are_accepted() -> None:
    settings = Settings.from_env(
        {"ENGINE_JWT_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN, "TTT_SHARED_SECRET": TTT}
    )
    assert settings.ttt_secret == TTT


def test_dev_generates_three_distinct_secrets_that_pass_the_rule() -> None:
    generated = generate_missing_secrets({})
    assert len(set(generated.values())) == 3
    settings = Settings.from_env(generated)  # the strict rule, not dev mode
    assert len({settings.jwt_secret, settings.admin_key, settings.ttt_secret}) == 3


def test_dev_mode_still_starts_with_the_shared_alias() -> None:
    env = {"ENGINE_DEV": "1", "ENGINE_SHARED_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN}
    assert Settings.from_env(env).ttt_secret == JWT


def test_serve_exits_2_with_one_line_naming_the_variables() -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith(("_SECRET", "_KEY")) and not key.startswith(("ENGINE_", "TTT_"))
    }
    env.update({"ENGINE_SHARED_SECRET": JWT, "ENGINE_ADMIN_KEY": ADMIN})
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--port", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TTT_SHARED_SECRET" in lines[0], done.stderr
    assert "ENGINE_SHARED_SECRET" in lines[0]
