"""Settings that explain themselves (issue 11, item 5): every bad value is one line naming
the variable, the value and what is allowed, before anything starts; `opay config` shows
every setting with secrets masked; the README's table is the generated one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from opay.commands import config
from opay.settings import SECRETS, Settings, SettingsError, describe, from_environment, read_environment

ROOT = Path(__file__).parent.parent
LINE = re.compile(r"^OPAY_[A-Z0-9_]+=\S.*: .+$")


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        from_environment(environ)
    message = str(caught.value)
    assert "\n" not in message and LINE.match(message), message
    return message


def bad_values() -> list[tuple[str, str]]:
    """A value each constrained setting must refuse, derived from its declaration, so a
    setting added later is covered too."""
    cases = []
    for field in msgspec.inspect.type_info(Settings).fields:  # type: ignore[union-attr]
        info = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
        name = field.name
        if isinstance(info, (msgspec.inspect.IntType, msgspec.inspect.FloatType)):
            cases.append((name, "abc"))
            if info.ge is not None or info.gt is not None:
                cases.append((name, str((info.ge if info.ge is not None else info.gt) - 1)))
            if info.le is not None:
                cases.append((name, str(info.le + 1)))
        elif isinstance(info, (msgspec.inspect.BoolType, msgspec.inspect.LiteralType)):
            cases.append((name, "maybe"))
        elif isinstance(info, msgspec.inspect.StrType):
            if info.pattern:
                cases.append((name, "not a valid value"))
            if info.max_length:
                cases.append((name, "x" * (info.max_length + 1)))
    return cases


@pytest.mark.parametrize(("name", "raw"), bad_values())
def test_every_constrained_setting_refuses_a_bad_value_in_one_line(name: str, raw: str) -> None:
    message = refused({f"OPAY_{name.upper()}": raw})
    assert message.startswith(f"OPAY_{name.upper()}=")
    assert "(allowed: " in message
    if name in SECRETS:
        assert raw not in message, "a refused secret is never echoed"
    else:
        assert raw[:20] in message


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"OPAY_PORT": "abc"}, "OPAY_PORT=abc: not an integer (allowed: 1..65535)"),
        ({"OPAY_PORT": "70000"}, "OPAY_PORT=70000: out of range (allowed: 1..65535)"),
        ({"OPAY_SHARD_CALL_TIMEOUT_SECONDS": "0"}, "OPAY_SHARD_CALL_TIMEOUT_SECONDS=0: out of range (allowed: more than 0)"),
        ({"OPAY_QUOTE_PROBE_SECONDS": "nan"}, "OPAY_QUOTE_PROBE_SECONDS=nan: not a finite number (allowed: more than 0, at most 60)"),
        ({"OPAY_AUTO_FUND": "maybe"}, "OPAY_AUTO_FUND=maybe: not true or false (allowed: true, false, 1, 0, yes, no, on, off)"),
        ({"OPAY_LOG_LEVEL": "loud"}, "OPAY_LOG_LEVEL=loud: not allowed (allowed: debug, error, info, warning)"),
        ({"OPAY_PROT": "8000"}, "OPAY_PROT=8000: unknown setting (did you mean OPAY_PORT?)"),
        ({"OPAY_WEBHOOK_SECERT": "x"}, "OPAY_WEBHOOK_SECERT=x: unknown setting (did you mean OPAY_WEBHOOK_SECRET?)"),
        ({"OPAY_XYZZY": "1"}, "OPAY_XYZZY=1: unknown setting (see `opay config` for every setting)"),
        ({"OPAY_PUBLIC_URL": "http://127.0.0.1:8000/"}, "OPAY_PUBLIC_URL=http://127.0.0.1:8000/: not allowed"
         " (allowed: an http(s) URL without a trailing / (the SDK joins paths onto it))"),
        ({"OPAY_CONSENT_URL": "javascript:alert(1)"}, "OPAY_CONSENT_URL=javascript:alert(1): not allowed (allowed: an http(s) URL)"),
        ({"OPAY_SLIPPAGE": "1"}, "OPAY_SLIPPAGE=1: out of range (allowed: a decimal in [0, 1))"),
        ({"OPAY_SLIPPAGE": "1%"}, "OPAY_SLIPPAGE=1%: not a decimal (allowed: a decimal in [0, 1))"),
        ({"OPAY_ILP_MAX_PACKET_AMOUNT": str(2**64)}, f"OPAY_ILP_MAX_PACKET_AMOUNT={2**64}: out of range (allowed: 0..2^64-1 (a uint64))"),
        ({"OPAY_FETCH_ALLOW": "127.0.0.1,http://x/"}, "OPAY_FETCH_ALLOW=127.0.0.1,http://x/: 'http://x/' is neither a hostname,"
         " an IP address nor a CIDR (allowed: hostnames, IP addresses and CIDRs, comma-separated)"),
        ({"OPAY_INCOMING_PAYMENT_DEFAULT_EXPIRY_SECONDS": "100", "OPAY_INCOMING_PAYMENT_MAX_EXPIRY_SECONDS": "50"},
         "OPAY_INCOMING_PAYMENT_DEFAULT_EXPIRY_SECONDS=100: longer than the maximum (allowed: at most OPAY_INCOMING_PAYMENT_MAX_EXPIRY_SECONDS=50)"),
        ({"OPAY_WEBHOOK_BACKOFF_BASE_SECONDS": "10", "OPAY_WEBHOOK_BACKOFF_MAX_SECONDS": "1"},
         "OPAY_WEBHOOK_BACKOFF_BASE_SECONDS=10.0: longer than the maximum (allowed: at most OPAY_WEBHOOK_BACKOFF_MAX_SECONDS=1.0)"),
        ({"OPAY_OPERATOR_TOKEN": "has a space"}, "OPAY_OPERATOR_TOKEN=(set): not allowed"
         " (allowed: Bearer token characters: letters, digits and -._~+/=)"),
        ({"OPAY_JWKS_FETCH_TIMEOUT_SECONDS": "2"}, "OPAY_JWKS_FETCH_TIMEOUT_SECONDS=2: was renamed OPAY_FETCH_TIMEOUT_SECONDS"),
    ],
)
def test_bad_settings_name_variable_value_and_what_is_allowed(environ: dict[str, str], expected: str) -> None:
    assert refused(environ) == expected


def test_good_values_are_converted_and_empty_means_default() -> None:
    settings = from_environment(
        {"OPAY_PORT": "9000", "OPAY_AUTO_FUND": "no", "OPAY_SHARD_CALL_TIMEOUT_SECONDS": "2.5", "OPAY_HOST": "", "PATH": "/bin"}
    )
    assert (settings.port, settings.auto_fund, settings.shard_call_timeout_seconds, settings.host) == (9000, False, 2.5, "127.0.0.1")
    assert settings.operator_token, "an unset operator token is generated"
    assert read_environment({}).operator_token == "", "read_environment keeps it as configured"


@pytest.mark.parametrize(
    ("variable", "raw"), [("OPAY_PORT", "abc"), ("OPAY_PROT", "8000"), ("OPAY_CONSENT_PAGE_DECIDES", "true"), ("OPAY_OPERATOR_TOKEN", "a b")]
)
def test_serve_exits_2_with_one_line_before_starting_anything(tmp_path: Path, variable: str, raw: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAY_")}
    env.update({"OPAY_DATA_DIR": str(tmp_path / "var"), variable: raw})
    # A timeout, not a hang, if validation ever let it start.
    result = subprocess.run([sys.executable, "-m", "opay.cli", "serve"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"opay: {variable}="), result.stderr
    assert "Traceback" not in result.stderr
    if variable == "OPAY_OPERATOR_TOKEN":
        assert raw not in lines[0]
    assert not (tmp_path / "var").exists(), "nothing was started"


def test_every_setting_has_a_description_and_secrets_are_marked() -> None:
    settings = describe()
    assert {s.name for s in settings} == set(Settings.__struct_fields__)
    assert [s.variable for s in settings if not s.description] == []
    looks_secret = {s.name for s in settings if re.search(r"(secret|password|_tokens?$)", s.name)}
    assert looks_secret <= SECRETS, f"mark as secret: {looks_secret - SECRETS}"
    assert SECRETS <= {s.name for s in settings}


def test_opay_config_prints_every_setting_with_secrets_masked(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for key in [k for k in os.environ if k.startswith("OPAY_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OPAY_PORT", "9000")
    monkeypatch.setenv("OPAY_WEBHOOK_SECRET", "webhook-secret-value-x7")
    monkeypatch.setenv("OPAY_ILP_INCOMING_TOKENS", "ab")
    assert config.run() == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {s.variable for s in describe()}
    assert rows["OPAY_PORT"].split()[1:3] == ["9000", "8000"]
    assert "port of the public API" in rows["OPAY_PORT"]
    assert "webhook-secret-value" not in out and rows["OPAY_WEBHOOK_SECRET"].split()[1] == "****x7"
    assert rows["OPAY_ILP_INCOMING_TOKENS"].split()[1] == "(set)", "a short secret shows no characters"
    assert "(random, printed at start)" in rows["OPAY_OPERATOR_TOKEN"]


def test_opay_config_from_the_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAY_")}
    env["OPAY_OPERATOR_TOKEN"] = "operator-token-value-q9"
    shown = subprocess.run([sys.executable, "-m", "opay.cli", "config"], env=env, capture_output=True, text=True, timeout=120, check=True)
    assert "OPAY_OPERATOR_TOKEN" in shown.stdout and "****q9" in shown.stdout and "operator-token-value" not in shown.stdout
    table = subprocess.run(
        [sys.executable, "-m", "opay.cli", "config", "--markdown"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert table.stdout == config.markdown()
    assert "operator-token-value" not in table.stdout, "the table shows defaults only"


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert config.readme_with_table(readme) == readme, "the README's settings table is stale: run `make settings-table`"
    for setting in describe():
        assert f"| `{setting.variable}` |" in readme
