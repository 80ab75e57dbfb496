"""Issue 20: one-line start-up errors, the admin CLI against a live server, dev secrets that
survive a restart, `mint-token` with only the JWT secret, `--help` with variables."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.local import LocalEngine, free_port

SECRETS = {
    "ENGINE_JWT_SECRET": "cli-jwt-secret-0123456789abcdef012345",
    "ENGINE_ADMIN_KEY": "cli-admin-key-0123456789abcdef0123456",
    "TTT_SHARED_SECRET": "cli-ttt-secret-0123456789abcdef012345",
}
ALL_SECRET_NAMES = (
    "ENGINE_JWT_SECRET",
    "JWT_SECRET",
    "ENGINE_SHARED_SECRET",
    "ENGINE_ADMIN_KEY",
    "ADMIN_SECRET",
    "ADMIN_API_KEY",
    "TTT_SHARED_SECRET",
    "ENGINE_VEND_SECRET",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALL_SECRET_NAMES}
    env.pop("ENGINE_STORE_URL", None)
    return {**env, **extra}


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], *names: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "serving" not in result.stderr + result.stdout
    for name in names:
        assert name in lines[0]


def test_missing_secret_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = clean_env(ENGINE_JWT_SECRET=SECRETS["ENGINE_JWT_SECRET"])
    result = cli("serve", "--store", f"sqlite:///{tmp_path}/e.db", env=env)
    assert_one_line_exit_2(result, "ENGINE_ADMIN_KEY", "TTT_SHARED_SECRET", "--dev")


@pytest.mark.parametrize(
    ("store", "named"),
    [
        ("mysql://localhost/x", "ENGINE_STORE_URL"),
        ("sqlite:///", "ENGINE_STORE_URL"),
        ("redis://127.0.0.1:{closed}/0", "cannot open redis://127.0.0.1:"),
        ("sqlite:///{tmp}/not-a-db.db", "cannot open"),
    ],
)
def test_bad_store_is_one_line_and_exit_2(tmp_path: Path, store: str, named: str) -> None:
    (tmp_path / "not-a-db.db").write_bytes(b"this is not an SQLite file" * 100)
    url = store.format(closed=free_port(), tmp=tmp_path)
    result = cli("serve", "--store", url, "--port", str(free_port()), env=clean_env(**SECRETS))
    assert_one_line_exit_2(result, "--store", named)


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(
            "serve",
            "--store",
            f"sqlite:///{tmp_path}/e.db",
            "--port",
            str(port),
            env=clean_env(**SECRETS),
        )
    assert_one_line_exit_2(result, "--port", str(port), "in use")


def test_bad_numeric_setting_is_one_line_and_exit_2() -> None:
    result = cli("serve", env=clean_env(ENGINE_PORT="eighty"))
    assert_one_line_exit_2(result, "--port", "eighty")


def test_mint_token_needs_only_the_jwt_secret() -> None:
    env = clean_env(ENGINE_JWT_SECRET=SECRETS["ENGINE_JWT_SECRET"])
    result = cli("mint-token", "--sub", "alice", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2
    missing = cli("mint-token", "--sub", "alice", env=clean_env())
    assert_one_line_exit_2(missing, "ENGINE_JWT_SECRET")


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (["serve"], ["ENGINE_JWT_SECRET", "ENGINE_STORE_URL", "METRICS_TOKEN", "LOG_FORMAT"]),
        (["mint-token"], ["ENGINE_JWT_SECRET"]),
        (["credits", "add"], ["ENGINE_ADMIN_KEY", "ENGINE_URL"]),
        (["credits", "balance"], ["ENGINE_ADMIN_KEY", "ENGINE_URL"]),
        (["credits", "refund"], ["ENGINE_ADMIN_KEY", "ENGINE_URL"]),
        (["audit"], ["ENGINE_ADMIN_KEY", "ENGINE_URL"]),
        (["simulator"], ["TTT_SHARED_SECRET"]),
    ],
)
def test_help_lists_variables_defaults_and_an_example(command: list[str], names: list[str]) -> None:
    from engine.cli import _parser

    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--help"])
    text = subprocess.run(
        [sys.executable, "-m", "engine", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "example:" in text and "pluct-engine " + command[0] in text.split("example:")[1]
    for name in names:
        assert name in text


@pytest.mark.server
def test_admin_cli_against_a_live_server() -> None:
    with LocalEngine() as engine:
        env = clean_env(ENGINE_ADMIN_KEY=engine.admin_key, ENGINE_URL=engine.url)
        added = cli("credits", "add", "cli-ann", "3", "--reason", "welcome", env=env)
        assert added.returncode == 0, added.stderr
        assert "balance 3" in added.stdout
        again = cli("credits", "add", "cli-ann", "2", "--client-request-id", "k1", env=env)
        replay = cli("credits", "add", "cli-ann", "2", "--client-request-id", "k1", env=env)
        assert "balance 5" in again.stdout and "replay" in replay.stdout
        vend = engine.client.post(
            "/v1/vend-token", headers=engine.user_headers("cli-ann"), json={}
        ).json()
        balance = cli("credits", "balance", "cli-ann", env=env)
        assert balance.returncode == 0 and balance.stdout.startswith("cli-ann: 4 ")
        refunded = cli("credits", "refund", vend["requestId"], "--user", "cli-ann", env=env)
        assert refunded.returncode == 0 and "balance 5" in refunded.stdout
        twice = cli("credits", "refund", vend["requestId"], "--user", "cli-ann", env=env)
        assert twice.returncode == 1 and "already_refunded" in twice.stderr
        trail = cli("audit", "cli-ann", "--json", env=env)
        actions = [entry["action"] for entry in __import__("json").loads(trail.stdout)]
        assert actions == ["grant", "grant", "vend", "refund"]
        human = cli("audit", "cli-ann", env=env)
        assert "4 entries for cli-ann" in human.stdout and "welcome" in human.stdout

        wrong_key = cli("credits", "balance", "cli-ann", env={**env, "ENGINE_ADMIN_KEY": "nope"})
        assert wrong_key.returncode == 1 and "X-API-Key" in wrong_key.stderr
    no_key = cli("credits", "balance", "x", env=clean_env())
    assert_one_line_exit_2(no_key, "ENGINE_ADMIN_KEY")
    unreachable = cli(
        "audit",
        "x",
        "--url",
        f"http://127.0.0.1:{free_port()}",
        env=clean_env(ENGINE_ADMIN_KEY="k"),
    )
    assert_one_line_exit_2(unreachable, "--url")


def _serve_dev(tmp_path: Path, secrets_file: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engine",
            "serve",
            "--dev",
            "--dev-secrets",
            str(secrets_file),
            "--store",
            f"sqlite:///{tmp_path}/dev.db",
            "--port",
            str(port),
        ],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("serve --dev did not start")


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    _, err = process.communicate(timeout=20)
    return err


@pytest.mark.server
def test_dev_secrets_survive_a_restart(tmp_path: Path) -> None:
    secrets_file = tmp_path / "state" / "dev-secrets.env"
    first, url = _serve_dev(tmp_path, secrets_file)
    try:
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        saved = dict(
            line.split("=", 1) for line in secrets_file.read_text().splitlines() if "=" in line
        )
        assert set(saved) == {"ENGINE_JWT_SECRET", "ENGINE_ADMIN_KEY", "TTT_SHARED_SECRET"}
        token = cli(
            "mint-token",
            "--sub",
            "dev-ann",
            env=clean_env(ENGINE_JWT_SECRET=saved["ENGINE_JWT_SECRET"]),
        ).stdout.strip()
    finally:
        first_err = _stop(first)
    assert first_err.count(str(secrets_file.resolve())) == 1
    assert "generated into" in first_err
    assert saved["ENGINE_ADMIN_KEY"] not in first_err  # the path is printed, not the secrets

    second, url = _serve_dev(tmp_path, secrets_file)
    try:
        balance = httpx.get(
            url + "/v1/credits/balance", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert balance.status_code == 200, balance.text
        granted = httpx.post(
            url + "/v1/credits/add",
            headers={"X-API-Key": saved["ENGINE_ADMIN_KEY"]},
            json={"userId": "dev-ann", "amount": 1},
            timeout=10,
        )
        assert granted.status_code == 200
    finally:
        second_err = _stop(second)
    assert "read from" in second_err
