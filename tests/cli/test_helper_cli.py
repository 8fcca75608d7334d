"""``keycourier token`` end to end: real subprocesses, a real config file, the platform stand-in."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.helper_server import MONITE_ID, MONITE_SECRET, kc
from tests.support.platform_standin import RunningStandin


@pytest.fixture
def env(tmp_path: Path, standin: RunningStandin) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[profiles.ci]
dialect = "monite"
base_url = "{standin.url}/v1"
environment = "sandbox"
version = "2024-05-25"
client_id_env = "MONITE_CLIENT_ID"
client_secret_env = "MONITE_CLIENT_SECRET"
env_name = "MONITE_TOKEN"
"""
    )
    e = dict(os.environ)
    e.update(
        KEYCOURIER_CONFIG=str(config),
        KEYCOURIER_LEDGER=str(tmp_path / "ledger.db"),
        MONITE_CLIENT_ID=MONITE_ID,
        MONITE_CLIENT_SECRET=MONITE_SECRET,
        XDG_RUNTIME_DIR="",
    )
    e.pop("GITHUB_ENV", None)
    return e


def test_json_format(env: dict[str, str], standin: RunningStandin) -> None:
    r = kc(env, "token", "--profile", "ci", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"access_token", "token_type", "expires_in", "expires_at"}
    assert doc["token_type"] == "Bearer"
    assert 1790 <= doc["expires_in"] <= 1800
    at = datetime.strptime(doc["expires_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert abs(at - (time.time() + 1800)) < 30
    assert standin.state.is_valid(doc["access_token"])
    assert MONITE_SECRET not in r.stdout + r.stderr
    assert "warning" not in r.stderr
    # token_issued is in the ledger, with the fingerprint and never the token
    from keycourier import config
    from keycourier.ledger.interface import EventType
    from keycourier.ledger.recorder import open_recorder
    from keycourier.partner.tokens import Token
    from keycourier.redact import Secret

    fp = Token(Secret(doc["access_token"]), "Bearer", 1, 0).fingerprint
    rec = open_recorder(config.load(env=env))
    try:
        events = [s.event for s in rec.history(fingerprint=fp)]
    finally:
        rec.close()
    assert [e.type for e in events] == [EventType.TOKEN_ISSUED]
    assert events[0].data["profile"] == "ci"
    assert events[0].data["expires_at"] == doc["expires_at"]
    assert doc["access_token"] not in json.dumps(dict(events[0].data))


def test_raw_env_and_credential_process_formats_share_the_cached_token(
    env: dict[str, str], standin: RunningStandin, tmp_path: Path
) -> None:
    raw = kc(env, "token", "--profile", "ci")
    assert raw.returncode == 0, raw.stderr
    token = raw.stdout.strip()
    assert standin.state.is_valid(token)
    envf = kc(env, "token", "--profile", "ci", "--format", "env")
    assert envf.returncode == 0
    assert f"export MONITE_TOKEN={token}\n" in envf.stdout
    assert "export MONITE_TOKEN_EXPIRES_AT=" in envf.stdout
    named = kc(env, "token", "--profile", "ci", "--format", "env", "--env-name", "X_TOKEN")
    assert named.stdout.startswith(f"export X_TOKEN={token}\n")
    cp = kc(env, "token", "--profile", "ci", "--format", "credential-process")
    doc = json.loads(cp.stdout)
    assert doc["Version"] == 1
    assert doc["AccessToken"] == token
    assert doc["Expiration"].endswith("Z")
    datetime.strptime(doc["Expiration"], "%Y-%m-%dT%H:%M:%SZ")
    assert standin.state.token_calls == 1  # the 0600 file cache served the rest
    files = list((Path(env["HOME"]) / ".cache" / "keycourier" / "tokens").glob("ci-*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(files[0].parent.stat().st_mode) == 0o700
    nocache = kc(env, "token", "--profile", "ci", "--no-cache")
    assert nocache.stdout.strip() != token
    assert standin.state.token_calls == 2


def test_parallel_cli_processes_make_one_upstream_call(
    env: dict[str, str], standin: RunningStandin
) -> None:
    standin.state.delay = 0.3
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "keycourier", "token", "--profile", "ci"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1
    assert standin.state.token_calls == 1


def test_github_format_masks_and_appends_heredoc(env: dict[str, str], tmp_path: Path) -> None:
    gh = tmp_path / "github_env"
    gh.write_text("EXISTING=1\n")
    env["GITHUB_ENV"] = str(gh)
    r = kc(env, "token", "--profile", "ci", "--format", "github")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("::add-mask::")
    token = lines[0][len("::add-mask::") :]
    assert token not in r.stderr
    text = gh.read_text().splitlines()
    assert text[0] == "EXISTING=1"
    assert text[1].startswith("MONITE_TOKEN<<ghadelimiter_")
    delim = text[1].split("<<", 1)[1]
    assert text[2] == token
    assert text[3] == delim
    assert text[4].startswith("MONITE_TOKEN_EXPIRES_AT<<")


def test_github_format_outside_actions_is_a_config_error(env: dict[str, str]) -> None:
    r = kc(env, "token", "--profile", "ci", "--format", "github")
    assert r.returncode == 3
    assert "GITHUB_ENV" in r.stderr
    assert r.stdout == ""


def test_wrong_secret_exits_5_naming_profile_and_source(env: dict[str, str]) -> None:
    env["MONITE_CLIENT_SECRET"] = "wrong-secret-0000000000"
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 5
    assert "profile ci" in r.stderr
    assert "MONITE_CLIENT_ID/MONITE_CLIENT_SECRET" in r.stderr
    assert "wrong-secret-0000000000" not in r.stderr
    assert r.stdout == ""


def test_malformed_config_exits_3_naming_the_key(env: dict[str, str], tmp_path: Path) -> None:
    cfg = Path(env["KEYCOURIER_CONFIG"])
    cfg.write_text(cfg.read_text().replace('environment = "sandbox"', 'environment = "prod"'))
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 3
    assert "profiles.ci.environment" in r.stderr
    cfg.write_text(cfg.read_text() + 'client_secret = "oops-in-file"\n')
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 3
    assert "oops-in-file" not in r.stderr


def test_missing_env_credentials_and_unknown_profile_exit_3(env: dict[str, str]) -> None:
    env.pop("MONITE_CLIENT_SECRET")
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 3
    assert "MONITE_CLIENT_SECRET" in r.stderr
    r = kc(env, "token", "--profile", "nope")
    assert r.returncode == 3
    assert "no profile named 'nope'" in r.stderr


def test_upstream_outage_exits_6(env: dict[str, str], standin: RunningStandin) -> None:
    standin.state.inject(503, count=50)
    cfg = Path(env["KEYCOURIER_CONFIG"])
    cfg.write_text(cfg.read_text() + "max_retries = 1\n")
    r = kc(env, "token", "--profile", "ci", "--no-cache")
    assert r.returncode == 6
    assert "HTTP 503" in r.stderr


CHILD = r"""
import base64, json, os, sys, time
from urllib.parse import quote
tok = os.environ["MONITE_TOKEN"]
cid, sec = sys.argv[1], open(sys.argv[2]).read()
lines = [
    "raw " + tok,
    "url " + quote(tok, safe=""),
    "Authorization: Basic " + base64.b64encode((cid + ":" + sec).encode()).decode(),
    "bearer-in-basic " + base64.b64encode(("user:" + tok).encode()).decode(),
    "json " + json.dumps({"token": tok}),
    "hex " + tok.encode().hex(),
    "HEX " + sec.encode().hex().upper(),
]
for line in lines:
    for ch in line + "\n":  # one byte per write: secrets split across reads
        sys.stdout.write(ch)
        sys.stdout.flush()
sys.stderr.write("err " + tok + "\n")
sys.exit(int(sys.argv[3]))
"""


def _child(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(MONITE_SECRET)
    return script, secret_file


def test_exec_masks_every_encoding_and_returns_the_exit_code(
    env: dict[str, str], standin: RunningStandin, tmp_path: Path
) -> None:
    from base64 import b64encode
    from urllib.parse import quote

    standin.state.token_suffix = "+/="
    script, secret_file = _child(tmp_path)
    r = kc(
        env,
        "exec",
        "--profile",
        "ci",
        "--",
        sys.executable,
        str(script),
        MONITE_ID,
        str(secret_file),
        "7",
    )
    assert r.returncode == 7, r.stderr
    tokens = list(standin.state.issued)
    assert len(tokens) == 1
    token = tokens[0]
    assert "+/=" in token
    out = r.stdout + r.stderr
    for leaked in (
        token,
        quote(token, safe=""),
        MONITE_SECRET,
        b64encode(f"{MONITE_ID}:{MONITE_SECRET}".encode()).decode(),
        # the child prints base64("user:" + token): its inner part depends on the token alone
        b64encode(b"user:" + token.encode()).decode()[8:-4],
        token.encode().hex(),
        MONITE_SECRET.encode().hex().upper(),
    ):
        assert leaked not in out
    assert r.stdout.count("<concealed by keycourier>") == 7
    assert "hex <concealed by keycourier>\nHEX <concealed by keycourier>\n" in r.stdout
    assert "err <concealed by keycourier>" in r.stderr
    assert r.stdout.startswith("raw <concealed by keycourier>\nurl <concealed by keycourier>\n")


def test_exec_no_mask_passes_output_through(
    env: dict[str, str], standin: RunningStandin, tmp_path: Path
) -> None:
    script, secret_file = _child(tmp_path)
    r = kc(
        env,
        "exec",
        "--profile",
        "ci",
        "--no-mask",
        "--",
        sys.executable,
        str(script),
        MONITE_ID,
        str(secret_file),
        "0",
    )
    assert r.returncode == 0
    token = next(iter(standin.state.issued))
    assert f"raw {token}\n" in r.stdout


def test_exec_env_name_and_missing_command(env: dict[str, str], tmp_path: Path) -> None:
    r = kc(
        env,
        "exec",
        "--profile",
        "ci",
        "--env-name",
        "OTHER",
        "--no-mask",
        "--",
        sys.executable,
        "-c",
        "import os; print(len(os.environ['OTHER']) > 10, 'MONITE_TOKEN' in os.environ)",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True False"
    r = kc(env, "exec", "--profile", "ci", "--", str(tmp_path / "does-not-exist"))
    assert r.returncode == 127
    assert "command not found" in r.stderr


def test_exec_starts_the_child_as_popen_would(env: dict[str, str], tmp_path: Path) -> None:
    """A descriptor keycourier inherited is not passed on, SIGPIPE is back to its default,
    COMMAND is looked up in the child's PATH, and a child with masking on and off sees
    the same."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    probe = bindir / "kc-probe"
    probe.write_text(  # a shell script: a Python child would ignore SIGPIPE itself
        "#!/bin/sh\n"
        "sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status\n"
        '[ -e "/proc/$$/fd/$KC_FD" ] && echo open || echo closed\n'
    )
    probe.chmod(0o755)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    try:
        for mask in ([], ["--no-mask"]):
            r = subprocess.run(
                [sys.executable, "-m", "keycourier", "exec", "--profile", "ci", *mask,
                 "--", "kc-probe"],
                env={
                    **env,
                    "PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}",
                    "KC_FD": str(write_end),
                },
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                pass_fds=(write_end,),
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
            ignored, fd_state = r.stdout.split()
            assert not int(ignored, 16) & 1 << (signal.SIGPIPE - 1), (mask, ignored)
            assert fd_state == "closed", mask
    finally:
        os.close(read_end)
        os.close(write_end)


def test_exec_searches_the_path_as_popen_does(env: dict[str, str], tmp_path: Path) -> None:
    """Missing entries are skipped; a file that is there but not executable is passed over
    for a later one that is, and reported (126) when none is."""
    first, second = tmp_path / "first", tmp_path / "second"
    for d in (first, second):
        d.mkdir()
    (first / "kc-tool").write_text("#!/bin/sh\necho wrong\n")  # not executable
    (second / "kc-tool").write_text("#!/bin/sh\necho right\n")
    (second / "kc-tool").chmod(0o755)
    missing = tmp_path / "missing"
    path = os.pathsep.join(str(d) for d in (missing, first, missing / "x", second))
    r = subprocess.run(
        [sys.executable, "-m", "keycourier", "exec", "--profile", "ci", "--", "kc-tool"],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (r.returncode, r.stdout) == (0, "right\n"), r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "keycourier", "exec", "--profile", "ci", "--", "kc-tool"],
        env={**env, "PATH": os.pathsep.join(str(d) for d in (missing, first))},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 126, r.stderr
    assert "command not executable: kc-tool" in r.stderr


def test_exec_forwards_signals(env: dict[str, str], tmp_path: Path) -> None:
    import signal

    child = tmp_path / "sig.py"
    child.write_text(
        "import signal, sys, time\n"
        "def h(n, f):\n"
        "    print('got', n, flush=True); sys.exit(42)\n"
        "signal.signal(signal.SIGTERM, h)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
        "sys.exit(1)\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keycourier",
            "exec",
            "--profile",
            "ci",
            "--",
            sys.executable,
            str(child),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 42
    assert f"got {int(signal.SIGTERM)}" in out


def test_unusable_cache_dir_degrades_to_no_cache(
    env: dict[str, str], standin: RunningStandin, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    env["XDG_CACHE_HOME"] = str(blocker)
    r = kc(env, "token", "--profile", "ci")
    assert r.returncode == 0, r.stderr
    assert standin.state.is_valid(r.stdout.strip())
    assert "token cache unavailable" in r.stderr


def test_client_add_key_file_and_json(env: dict[str, str], tmp_path: Path) -> None:
    key_file = tmp_path / "ci.key"
    r = kc(env, "helper", "client", "add", "runner", "--profile", "ci", "--key-file", str(key_file))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("kck_")
    r = kc(env, "helper", "client", "add", "other", "--profile", "*", "--json")
    doc = json.loads(r.stdout)
    assert doc["key"].startswith("kck_")
    assert doc["profiles"] == ["*"]
    r = kc(env, "helper", "client", "add", "runner", "--profile", "ci")
    assert r.returncode == 2  # an active client with that name exists
    r = kc(env, "helper", "client", "revoke", "nobody")
    assert r.returncode == 2
    r = kc(env, "helper", "client", "list")
    assert r.returncode == 0
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["other", "runner"]


def test_exec_refuses_a_token_in_argv(env: dict[str, str]) -> None:
    token = kc(env, "token", "--profile", "ci").stdout.strip()  # cached: exec gets the same one
    r = kc(env, "exec", "--profile", "ci", "--", "echo", f"Bearer {token}")
    assert r.returncode == 2
    assert "appears in the command's arguments" in r.stderr
    assert token not in r.stdout + r.stderr


def test_cache_is_keyed_by_the_credentials_not_just_the_profile(
    env: dict[str, str], standin: RunningStandin
) -> None:
    first = kc(env, "token", "--profile", "ci")
    assert first.returncode == 0, first.stderr
    token_a = first.stdout.strip()
    # Same profile, another partner's credentials: must not get partner A's token.
    other_id, other_secret = "7d1e6c2a-5b4f-4e0a-8c3d-1f2e3a4b5c6d", "other-secret-1b2c3d4e5f6a"
    standin.state.clients[other_id] = other_secret
    other = dict(env, MONITE_CLIENT_ID=other_id, MONITE_CLIENT_SECRET=other_secret)
    second = kc(other, "token", "--profile", "ci")
    assert second.returncode == 0, second.stderr
    token_b = second.stdout.strip()
    assert token_b != token_a
    assert standin.state.issued[token_b].client_id == other_id
    # A rotated secret for partner A: a fresh token, not the one minted with the old secret.
    rotated = "cli-secret-rotated-0f9e8d7c6b5a"
    standin.state.clients[MONITE_ID] = rotated
    third = kc(dict(env, MONITE_CLIENT_SECRET=rotated), "token", "--profile", "ci")
    assert third.returncode == 0, third.stderr
    assert third.stdout.strip() not in (token_a, token_b)
    assert standin.state.token_calls == 3
    # Each credential set is served its own cached token.
    again = kc(other, "token", "--profile", "ci")
    assert again.stdout.strip() == token_b
    assert standin.state.token_calls == 3
    tokens = Path(env["HOME"]) / ".cache" / "keycourier" / "tokens"
    assert len(list(tokens.glob("ci-*.json"))) == 3
    stored = b"".join(p.read_bytes() + p.name.encode() for p in tokens.iterdir())
    for secret in (MONITE_SECRET, other_secret, rotated):
        assert secret.encode() not in stored


ENV_CHILD = r"""
import json, os, sys
print(json.dumps({name: os.environ.get(name) for name in sys.argv[1:]}, sort_keys=True))
"""

CREDENTIAL_VARS = {
    "VAULT_TOKEN": "hvs.vault-token-value-0123456789",
    "MY_VAULT_TOKEN": "hvs.configured-token-env-98765",
    "KEYCOURIER_PASSPHRASE": "correct horse battery staple",
    "KEYCOURIER_PROBE_REFRESH_TOKEN": "AB11-probe-refresh-token-value",
    "KEYCOURIER_HELPER_KEY": "kck_deadbeef_not-a-real-key-but-secret",
    "KEYCOURIER_HELPER_KEY_FILE": "/run/secrets/helper.key",
    "KEYCOURIER_VAULT_ROLE_ID": "role-id-1234",
    "KEYCOURIER_VAULT_SECRET_ID_FILE": "/run/secrets/secret-id",
    "OTHER_PARTNER_ID": "other-partner-client-id",
    "OTHER_PARTNER_SECRET": "other-partner-secret-value-42",
}


def test_exec_strips_credential_variables_unless_kept(env: dict[str, str], tmp_path: Path) -> None:
    cfg = Path(env["KEYCOURIER_CONFIG"])
    cfg.write_text(
        '[vault]\ntoken_env = "MY_VAULT_TOKEN"\n'
        + cfg.read_text()
        + """
[profiles.other]
dialect = "oauth2"
base_url = "https://auth.example.test"
token_path = "/oauth/token"
environment = "sandbox"
client_id_env = "OTHER_PARTNER_ID"
client_secret_env = "OTHER_PARTNER_SECRET"
"""
    )
    env.update(CREDENTIAL_VARS, UNRELATED_SETTING="stays")
    script = tmp_path / "printenv.py"
    script.write_text(ENV_CHILD)
    names = [*CREDENTIAL_VARS, "MONITE_CLIENT_ID", "MONITE_CLIENT_SECRET", "UNRELATED_SETTING"]

    def child_env(*flags: str) -> dict[str, str | None]:
        r = kc(env, "exec", "--profile", "ci", *flags, "--", sys.executable, str(script), *names)
        assert r.returncode == 0, r.stderr
        doc: dict[str, str | None] = json.loads(r.stdout)
        return doc

    seen = child_env()
    assert seen.pop("UNRELATED_SETTING") == "stays"
    assert seen == dict.fromkeys(seen)  # every credential variable is gone
    assert set(seen) == {*CREDENTIAL_VARS, "MONITE_CLIENT_ID", "MONITE_CLIENT_SECRET"}
    kept = child_env(
        "--no-mask", "--keep-env", "VAULT_TOKEN", "--keep-env", "KEYCOURIER_PASSPHRASE"
    )
    assert kept["VAULT_TOKEN"] == CREDENTIAL_VARS["VAULT_TOKEN"]
    assert kept["KEYCOURIER_PASSPHRASE"] == CREDENTIAL_VARS["KEYCOURIER_PASSPHRASE"]
    assert kept["MY_VAULT_TOKEN"] is None
    assert kept["OTHER_PARTNER_SECRET"] is None
    r = kc(env, "exec", "--profile", "ci", "--keep-env", "BAD NAME", "--", "true")
    assert r.returncode == 2


def test_exec_masks_kept_credential_variables(env: dict[str, str], tmp_path: Path) -> None:
    """--keep-env passes a credential on, but its value is still concealed in the output;
    a *_FILE variable (a path) and a non-credential variable are not."""
    env.update(CREDENTIAL_VARS, UNRELATED_SETTING="unrelated-value-123")
    script = tmp_path / "printenv.py"
    script.write_text(ENV_CHILD)
    names = ["VAULT_TOKEN", "KEYCOURIER_PASSPHRASE", "KEYCOURIER_HELPER_KEY_FILE"]
    keep = [flag for name in names for flag in ("--keep-env", name)]
    r = kc(
        env, "exec", "--profile", "ci", *keep, "--",
        sys.executable, str(script), *names, "UNRELATED_SETTING",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["VAULT_TOKEN"] == "<concealed by keycourier>"
    assert seen["KEYCOURIER_PASSPHRASE"] == "<concealed by keycourier>"
    assert seen["KEYCOURIER_HELPER_KEY_FILE"] == CREDENTIAL_VARS["KEYCOURIER_HELPER_KEY_FILE"]
    assert seen["UNRELATED_SETTING"] == "unrelated-value-123"
    assert CREDENTIAL_VARS["VAULT_TOKEN"] not in r.stdout + r.stderr


def test_token_is_printed_when_bookkeeping_after_its_event_fails(
    env: dict[str, str], standin: RunningStandin
) -> None:
    assert kc(env, "token", "--profile", "ci", "--no-cache").returncode == 0  # creates the ledger
    busy = ["-m", "tests.support.busy_checkpoint", "token", "--profile", "ci", "--no-cache"]
    r = subprocess.run(  # the ledger too busy to sign its checkpoint; appending still works
        [sys.executable, *busy],
        env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert standin.state.is_valid(r.stdout.strip())
    assert "keycourier: warning: token_issued is on record, but the ledger bookkeeping" in r.stderr
    exported = kc(env, "audit", "export", "--format", "jsonl")
    types = [json.loads(line)["type"] for line in exported.stdout.splitlines()]
    assert types == ["token_issued", "token_issued"]


def _hold_refresh_lock(env: dict[str, str], profile: str, seconds: float) -> subprocess.Popen[str]:
    """Another process holding PROFILE's token refresh lock (flock) for SECONDS."""
    from keycourier.helper.filecache import cache_dir

    directory = cache_dir(env)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n",
            str(directory / f"{profile}.lock"),
            str(seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_token_waiting_for_another_refresh_says_so_and_ends_at_the_timeout(
    env: dict[str, str], standin: RunningStandin
) -> None:
    holder = _hold_refresh_lock(env, "ci", 120)
    try:
        began = time.monotonic()
        r = kc(env, "token", "--profile", "ci", "--timeout", "3s")
        took = time.monotonic() - began
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert r.returncode == 6, r.stderr
    assert 3 <= took < 3 + 10, took  # the bound, plus start-up on a loaded machine
    assert "keycourier: waiting for another process refreshing the token for profile ci ...\n" in (
        r.stderr
    )
    assert "another process kept refreshing the token until the timeout" in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert standin.state.token_calls == 0


def test_token_waits_for_another_refresh_within_the_timeout(
    env: dict[str, str], standin: RunningStandin
) -> None:
    holder = _hold_refresh_lock(env, "ci", 120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "keycourier", "token", "--profile", "ci"],  # --timeout 30s
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()
        assert (
            said
            == "keycourier: waiting for another process refreshing the token for profile ci ...\n"
        )
        holder.kill()  # the other process is done: its lock goes with it
        out, err = proc.communicate(timeout=60)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, err
    assert standin.state.is_valid(out.strip())


def test_token_timeout_takes_the_connection_wait_durations(env: dict[str, str]) -> None:
    r = kc(env, "token", "--profile", "ci", "--timeout", "soon")
    assert r.returncode == 2
    assert "--timeout must look like 36h, 90m, 90s, 500ms" in r.stderr
    assert "not 'soon'" in r.stderr
    assert kc(env, "token", "--profile", "ci", "--timeout", "0s").returncode == 2


def test_token_serves_a_valid_cached_token_when_the_refresh_lock_stays_held(
    env: dict[str, str], standin: RunningStandin, tmp_path: Path
) -> None:
    config = Path(env["KEYCOURIER_CONFIG"])
    config.write_text(config.read_text() + "refresh_at = 0.1\n")
    standin.state.monite_lifetime = 60  # refresh after 6 s, valid for 60 s
    first = kc(env, "token", "--profile", "ci")
    assert first.returncode == 0, first.stderr
    cached = first.stdout.strip()
    time.sleep(6.5)  # past the refresh point: this call wants a new token
    holder = _hold_refresh_lock(env, "ci", 120)
    try:
        r = kc(env, "token", "--profile", "ci", "--timeout", "2s")
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == cached
    assert "serving the cached token until it expires" in r.stderr
    assert standin.state.token_calls == 1
