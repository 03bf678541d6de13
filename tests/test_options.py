"""The server's option table: command line, environment and Settings agree."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from clusterchat.cli import build_parser
from clusterchat.config import HashCost, Limits, Settings
from clusterchat.options import NOT_OPTIONS, OPTIONS, settings_from


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("CLUSTERCHAT_") and name != "CLUSTERCHAT_HOME":
            monkeypatch.delenv(name)


def _settings(*argv: str) -> Settings:
    return settings_from(vars(build_parser().parse_args(["server", *argv])))


def test_no_options_give_the_settings_defaults() -> None:
    assert _settings() == Settings()


def test_every_field_is_set_by_exactly_one_option() -> None:
    paths = [path for option in OPTIONS.values() for path in option.fields]
    assert len(paths) == len(set(paths))
    wanted = {f.name for f in dataclasses.fields(Settings)} - NOT_OPTIONS
    wanted |= {f"limits.{f.name}" for f in dataclasses.fields(Limits)}
    wanted |= {f"hash_cost.{f.name}" for f in dataclasses.fields(HashCost)}
    assert set(paths) == wanted


def test_values_reach_settings() -> None:
    s = _settings(
        "--port", "0", "--hash-cost", "1,8,1", "--user-quota", "4,5,6",
        "--trusted-proxy", " 10.0.0.1 , ::1", "--shed-lag", "0.25",
    )  # fmt: skip
    assert s.port == 0
    assert s.hash_cost == HashCost(1, 8, 1)
    assert (s.limits.max_groups_created, s.limits.max_memberships, s.limits.max_friends) == (
        4, 5, 6,
    )  # fmt: skip
    assert s.trusted_proxies == ("10.0.0.1", "::1")
    assert s.shed_lag == 0.25


def test_empty_means_off_or_the_computed_default() -> None:
    s = _settings("--redis", "", "--http-port", "0", "--trusted-proxy", "", "--db", "")
    assert (s.redis_url, s.http_port, s.trusted_proxies) == (None, None, ())
    assert s.db_url == Settings().db_url


def test_left_out_parts_keep_their_default() -> None:
    assert _settings("--registrations", "5").limits.registration_window == 86_400
    # Without a burst, one second's worth of requests may come at once.
    assert _settings("--message-rate", "7.5").limits.message_burst == 7
    assert _settings("--message-rate", "0").limits.message_burst == 1


def test_environment_sets_and_command_line_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERCHAT_LOGIN_FAILURES", "3,30,60")
    monkeypatch.setenv("CLUSTERCHAT_MAX_GROUP_SIZE", "9")
    s = _settings("--max-group-size", "12")
    assert (s.limits.login_failures, s.limits.login_window) == (3, 60)
    assert s.limits.max_group_size == 12


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--hash-cost", "1,2"), ("--message-rate", "x"), ("--port", "six"), ("--login-delay", "1")],
)
def test_a_bad_value_names_the_option(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _settings(flag, value)
    assert exit_.value.code == 2
    assert (
        f"argument {flag}: wants {OPTIONS[flag].metavar}, not {value!r}" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["server", "--port", "70000"], {}, "argument --port: a port is 0 to 65535, not '70000'"),
        (["server", "--port", "-1"], {}, "argument --port: a port is 0 to 65535, not '-1'"),
        (["server", "--http-port", "65536"], {}, "argument --http-port: a port is 0 to 65535"),
        (["server"], {"CLUSTERCHAT_PORT": "99999"}, "argument --port: a port is 0 to 65535"),
        (["server", "--db", "postgres://u:secret@x/y"], {}, "unsupported database 'postgres'"),
        (["admin", "users", "--db", "postgres://x/y"], {}, "unsupported database 'postgres'"),
        (["db", "status"], {"CLUSTERCHAT_DB": "oracle://x"}, "unsupported database 'oracle'"),
    ],
)
def test_ports_and_store_urls_are_checked_where_they_are_read(
    argv: list[str], env: dict[str, str], said: str, tmp_path: Path
) -> None:
    """`server --port 70000` listened on 4464 (the kernel wraps), `--port -1`
    and `--db postgres://...` ended in tracebacks; the environment's values
    go through the same check. Now: argparse's one line, exit 2."""
    import os

    env = {**os.environ, "CLUSTERCHAT_HOME": str(tmp_path), **env}
    done = subprocess.run(
        [sys.executable, "-m", "clusterchat", *argv], capture_output=True, text=True,
        env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "secret" not in done.stderr
    if "--db" in argv or "CLUSTERCHAT_DB" in env:
        assert "sqlite+aiosqlite" in done.stderr and "mysql+asyncmy" in done.stderr


def test_help_names_every_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    missing = [o.env for o in OPTIONS.values() if o.env not in text]
    assert not missing


def test_server_usage_shows_the_originals_ip_port_form(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: the positionals were hidden, so usage showed only options.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["server", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: clusterchat server [IP] [PORT] [options]\n"), out[:200]
    args = build_parser().parse_args(["server", "127.0.0.1", "6001"])
    assert (args.ip, args.port_pos) == ("127.0.0.1", 6001)


def test_the_terminal_client_does_not_load_the_service() -> None:
    """Starting `clusterchat client` must not pay for argon2 or the server."""
    code = (
        "import sys, clusterchat.cli, clusterchat.client.main, clusterchat.options\n"
        "print(sorted(m for m in sys.modules if m == 'argon2' or "
        "m.startswith(('clusterchat.service', 'clusterchat.server'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
