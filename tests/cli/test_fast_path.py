"""The console script's click-free fast path (keycourier.cli.entry) against click itself.

Whatever command line the fast path takes (``age encrypt``/``decrypt``, ``token``,
``exec``, ``audit verify``, ``--version``), click must parse to exactly the same values or print the
same text; everything else must be left to click. Checked on generated command
lines over a vocabulary of the options, values and traps (help, ``--``,
``--opt=value``, bundled flags, directories, unreadable files, repeats).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keycourier import age
from keycourier.cli import age_cmd, bundle_cmd, helper_cmd, provenance_cmd
from keycourier.cli.entry import (
    AUDIT_VERIFY_OPTIONS,
    DECRYPT_OPTIONS,
    ENCRYPT_OPTIONS,
    EXEC_OPTIONS,
    TOKEN_FORMATS,
    TOKEN_OPTIONS,
    parse,
    parse_audit_verify,
    parse_helper,
    parse_inspect,
)
from keycourier.cli.main import cli

R1 = age.X25519Identity.generate().recipient().to_string()
R2 = age.X25519Identity.generate().recipient().to_string()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fast")
    for name in ("key.txt", "in.txt", "in.age", "recipients.txt", "pass.txt"):
        (base / name).write_text("x\n")
    (base / "adir").mkdir()
    return base


def _vocabulary(base: Path) -> list[str]:
    names = ("key.txt", "in.txt", "in.age", "recipients.txt", "adir", "missing.txt", "out.age")
    return [
        *ENCRYPT_OPTIONS,
        *DECRYPT_OPTIONS,
        R1,
        R2,
        *(str(base / n) for n in names),
        "-",
        "",
        "--",
        "-h",
        "--help",
        "-ai",
        "-ao",
        f"--output={base / 'x.age'}",
        "-p",
        "--passphrase",
        "--passphrase-file",
        "--work-factor",
        "4",
        "--debug",
        "-x",
        "age1notarecipient",
    ]


def _click_params(command: click.Command, args: list[str]) -> dict[str, object]:
    ctx = command.make_context(command.name or "", list(args))
    return dict(ctx.params)


def _pieces(base: Path, sub: str) -> st.SearchStrategy[list[str]]:
    """One option with a value, a flag, a positional, or (now and then) a trap."""
    table = ENCRYPT_OPTIONS if sub == "encrypt" else DECRYPT_OPTIONS
    vocab = _vocabulary(base)
    paths = [str(base / n) for n in ("key.txt", "in.age", "recipients.txt", "out.age", "new.txt")]
    values = {
        "multi": st.sampled_from([R1, R2]),
        "multi-path": st.sampled_from(paths),
        "single-path-dash": st.sampled_from([*paths, "-"]),
    }
    option = st.sampled_from(sorted(table)).flatmap(
        lambda opt: (
            st.just([opt])
            if table[opt][1] == "flag"
            else values[table[opt][1]].map(lambda v: [opt, v])
        )
    )
    positional = st.sampled_from([*paths, "-"]).map(lambda p: [p])
    trap = st.sampled_from(vocab).map(lambda t: [t])
    return st.one_of(option, option, option, positional, trap)


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_what_the_fast_path_takes_click_parses_the_same(files: Path, data: st.DataObject) -> None:
    sub = data.draw(st.sampled_from(["encrypt", "decrypt"]))
    pieces = data.draw(st.lists(_pieces(files, sub), max_size=6))
    rest = [arg for piece in pieces for arg in piece]
    fast = parse(["age", sub, *rest])
    if fast is None:
        return
    command = age_cmd.encrypt if sub == "encrypt" else age_cmd.decrypt
    assert _click_params(command, rest) == fast.params(), rest


@pytest.mark.parametrize(
    "argv",
    [
        ["age", "encrypt", "-r", R1, "-o", "out.age", "in.txt"],
        ["age", "encrypt", "--recipient", R1, "-r", R2, "-a", "in.txt"],
        ["age", "encrypt", "-R", "recipients.txt", "-o", "-", "-"],
        ["age", "encrypt", "in.txt", "--armor", "--recipient", R1],
        ["age", "decrypt", "-i", "key.txt", "in.age"],
        ["age", "decrypt", "--identity", "key.txt", "-i", "key.txt", "-o", "out.txt", "in.age"],
        ["age", "decrypt", "-i", "key.txt"],
    ],
)
def test_the_plain_forms_take_the_fast_path(
    files: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    fast = parse(argv)
    assert fast is not None
    command = age_cmd.encrypt if argv[1] == "encrypt" else age_cmd.decrypt
    assert _click_params(command, argv[2:]) == fast.params()


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "age", "decrypt", "-i", "key.txt", "in.age"],
        ["age", "decrypt", "in.age"],  # a passphrase: maybe a prompt
        ["age", "encrypt", "in.txt"],  # no recipients: click's usage error
        ["age", "encrypt", "-p", "in.txt"],
        ["age", "decrypt", "-i", "key.txt", "--passphrase-file", "pass.txt", "in.age"],
        ["age", "decrypt", "-i", "adir", "in.age"],  # click: is a directory
        ["age", "decrypt", "-i", "key.txt", "-o", "a", "-o", "b", "in.age"],
        ["age", "decrypt", "-i", "key.txt", "in.age", "other.age"],
        ["age", "decrypt", "-i", "key.txt", "--", "in.age"],
        ["age", "decrypt", "--identity=key.txt", "in.age"],
        ["age", "decrypt", "-ikey.txt", "in.age"],
        ["age", "decrypt", "-i", "-", "in.age"],
        ["age", "decrypt", "-i"],
        ["age", "decrypt", "-h"],
        ["age", "keygen"],
        ["identity", "new"],
    ],
)
def test_everything_else_is_left_to_click(
    files: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    assert parse(argv) is None


def test_the_option_tables_match_the_click_commands() -> None:
    for table, command in ((ENCRYPT_OPTIONS, age_cmd.encrypt), (DECRYPT_OPTIONS, age_cmd.decrypt)):
        by_spelling = {opt: param for param in command.params for opt in getattr(param, "opts", [])}
        for spelling, (dest, kind) in table.items():
            param = by_spelling[spelling]
            assert param.name == dest
            assert isinstance(param, click.Option)
            assert param.multiple == kind.startswith("multi")
            assert param.is_flag == (kind == "flag")


def test_the_installed_script_takes_the_fast_path_without_click(tmp_path: Path) -> None:
    ident = age.X25519Identity.generate()
    (tmp_path / "key.txt").write_text(ident.to_string() + "\n")
    (tmp_path / "in.age").write_bytes(age.encrypt([ident.recipient()], b"payload"))
    argv = ["age", "decrypt", "-i", "key.txt", "in.age"]
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keycourier", *argv],
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"payload"
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.decode().splitlines()]
    assert "keycourier.cli.age_ops" in imported
    assert "click" not in imported


def test_shell_completion_is_left_to_click(tmp_path: Path) -> None:
    """click's completion runs on _KEYCOURIER_COMPLETE whatever argv says."""
    argv = ["age", "decrypt", "-i", "key.txt", "in.age"]
    out = subprocess.run(
        [sys.executable, "-m", "keycourier", *argv],
        cwd=tmp_path,
        env={**os.environ, "_KEYCOURIER_COMPLETE": "bash_source"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert b"complete" in out.stdout  # the bash completion script, not a decryption


@pytest.mark.parametrize("closed", ["stdin", "stdout"])
def test_a_closed_standard_stream_is_a_usage_error(tmp_path: Path, closed: str) -> None:
    ident = age.X25519Identity.generate()
    (tmp_path / "key.txt").write_text(ident.to_string() + "\n")
    (tmp_path / "in.age").write_bytes(age.encrypt([ident.recipient()], b"payload"))
    argv = (
        ["age", "encrypt", "-a", "-r", ident.recipient().to_string()]
        if closed == "stdin"
        else ["age", "decrypt", "-i", "key.txt", "in.age"]
    )
    close = "<&-" if closed == "stdin" else ">&-"
    for runner in (
        ["-m", "keycourier"],  # the fast path
        ["-c", "import sys; from keycourier.cli.main import run; "
               "sys.argv = ['keycourier', *sys.argv[1:]]; run()"],  # click's
    ):  # fmt: skip
        out = subprocess.run(
            ["sh", "-c", f'exec "$0" "$@" {close}', sys.executable, *runner, *argv],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        assert out.returncode == 2, (runner, out.stderr)
        assert f"standard {closed.removeprefix('std')}put is closed".encode() in out.stderr
        assert b"Traceback" not in out.stderr


# -- token and exec -------------------------------------------------------------------------

HELPER_TRAPS = [
    "--",
    "-h",
    "--help",
    "",
    "-x",
    "--profile=ci",
    "-pci",
    "--format=json",
    "--debug",
    "--config",
    "yaml",
    "-",
    "--no-such-option",
]


GOOD_VALUES = {
    "profile": ["ci", "prod"],
    "fmt": list(TOKEN_FORMATS),
    "env_name": ["MONITE_TOKEN", "X"],
    "keep_env": ["VAULT_TOKEN", "HOME"],
    "timeout": ["30s", "2m"],
}
BAD_VALUES = ["", "-", "-p", "--no-cache", "yaml", "JSON"]
WORDS = ["true", "sh", "-c", "echo", "--no-mask", "-p", "--", "--help", "x"]


def _draw_helper_line(data: st.DataObject, sub: str) -> list[str]:
    """Each option at most once (twice for --keep-env) with a good value, in any order;
    in about half the lines one trap (help, --opt=value, a bad value, a repeat...)
    somewhere; then, for exec, [--] COMMAND."""
    table = TOKEN_OPTIONS if sub == "token" else EXEC_OPTIONS
    spellings: dict[str, list[str]] = {}
    for spelling, (dest, _kind) in table.items():
        spellings.setdefault(dest, []).append(spelling)
    pieces: list[list[str]] = []
    for dest, names in spellings.items():
        kind = table[names[0]][1]
        for _ in range(data.draw(st.integers(0, 2 if kind == "multi" else 1))):
            opt = data.draw(st.sampled_from(names))
            value = [] if kind == "flag" else [data.draw(st.sampled_from(GOOD_VALUES[dest]))]
            pieces.append([opt, *value])
    pieces = list(data.draw(st.permutations(pieces)))
    if data.draw(st.booleans()):
        trap = data.draw(
            st.one_of(
                st.sampled_from(HELPER_TRAPS).map(lambda t: [t]),
                st.tuples(st.sampled_from(sorted(table)), st.sampled_from(BAD_VALUES)).map(list),
            )
        )
        pieces.insert(data.draw(st.integers(0, len(pieces))), trap)
    args = [arg for piece in pieces for arg in piece]
    words = data.draw(st.lists(st.sampled_from(WORDS), max_size=4))
    if sub == "exec":
        return args + data.draw(st.sampled_from([[], ["--"]])) + words
    return args + (words if data.draw(st.integers(0, 3)) == 0 else [])


@settings(max_examples=600, deadline=None)
@given(data=st.data())
def test_what_the_helper_fast_path_takes_click_parses_the_same(data: st.DataObject) -> None:
    sub = data.draw(st.sampled_from(["token", "exec"]))
    rest = _draw_helper_line(data, sub)
    fast = parse_helper([sub, *rest])
    if fast is None:
        return
    command = helper_cmd.token if sub == "token" else helper_cmd.exec_
    assert _click_params(command, rest) == fast.params(), rest


@pytest.mark.parametrize(
    "argv",
    [
        ["token", "--profile", "ci"],
        ["token", "-p", "ci", "--format", "json", "--env-name", "MONITE_TOKEN", "--no-cache"],
        ["token", "--format", "credential-process", "-p", "ci"],
        ["exec", "-p", "ci", "--", "true"],
        ["exec", "--profile", "ci", "--env-name", "T", "--keep-env", "A", "--keep-env", "B",
         "--no-mask", "--no-cache", "--", "sh", "-c", "exit 3"],
        ["exec", "-p", "ci", "./deploy.sh", "--stage", "prod"],
        ["exec", "-p", "ci", "--", "cmd", "--", "-p", "x"],
    ],
)  # fmt: skip
def test_the_plain_token_and_exec_forms_take_the_fast_path(argv: list[str]) -> None:
    fast = parse_helper(argv)
    assert fast is not None
    command = helper_cmd.token if argv[0] == "token" else helper_cmd.exec_
    assert _click_params(command, argv[1:]) == fast.params()


@pytest.mark.parametrize(
    "argv",
    [
        ["token"],  # no profile: click's usage error
        ["token", "-p", "ci", "--format", "yaml"],
        ["token", "-p", "ci", "-p", "prod"],
        ["token", "-p", "ci", "extra"],
        ["token", "-p", "ci", "--help"],
        ["token", "--profile=ci"],
        ["token", "-p"],
        ["token", "-p", ""],
        ["exec", "-p", "ci"],  # no COMMAND
        ["exec", "-p", "ci", "--"],
        ["exec", "true"],  # no profile
        ["exec", "-p", "ci", "-x", "true"],
        ["exec", "--help"],
        ["--debug", "token", "-p", "ci"],
        ["--config", "c.toml", "token", "-p", "ci"],
        ["serve"],
    ],
)
def test_other_token_and_exec_lines_are_left_to_click(argv: list[str]) -> None:
    assert parse_helper(argv) is None


def test_the_helper_option_tables_match_the_click_commands() -> None:
    for table, command in ((TOKEN_OPTIONS, helper_cmd.token), (EXEC_OPTIONS, helper_cmd.exec_)):
        options = [param for param in command.params if isinstance(param, click.Option)]
        by_spelling = {opt: param for param in options for opt in param.opts}
        assert set(table) == set(by_spelling)  # every option of the command is known
        for spelling, (dest, kind) in table.items():
            param = by_spelling[spelling]
            assert param.name == dest
            assert isinstance(param, click.Option)
            assert param.multiple == (kind == "multi")
            assert param.is_flag == (kind == "flag")
    fmt = next(p for p in helper_cmd.token.params if p.name == "fmt")
    assert isinstance(fmt.type, click.Choice)
    assert tuple(fmt.type.choices) == TOKEN_FORMATS


def test_version_prints_what_click_prints() -> None:
    fast = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keycourier", "--version"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert fast.returncode == 0, fast.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in fast.stderr.decode().splitlines()]
    assert "click" not in imported
    clicked = CliRunner().invoke(cli, ["--version"])
    assert clicked.exit_code == 0
    assert fast.stdout.decode() == clicked.output


def test_version_with_stdout_closed_exits_0_as_click_does() -> None:
    for runner in (
        ["-m", "keycourier"],  # the fast path
        ["-c", "import sys; from keycourier.cli.main import run; "
               "sys.argv = ['keycourier', *sys.argv[1:]]; run()"],  # click's
    ):  # fmt: skip
        out = subprocess.run(
            ["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, *runner, "--version"],
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, (runner, out.stderr)
        assert out.stderr == b""


# -- audit verify ---------------------------------------------------------------------------


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_what_the_audit_fast_path_takes_click_parses_the_same(
    files: Path, data: st.DataObject
) -> None:
    paths = [str(files / n) for n in ("in.txt", "adir", "missing.db")]
    piece = st.one_of(
        st.sampled_from(["--json", "--vault"]).map(lambda f: [f]),
        st.sampled_from([*paths, "-", "", "--json"]).map(lambda v: ["--ledger", v]),
        st.sampled_from([*paths, "-", ""]).map(lambda v: ["--since", v]),
        st.sampled_from(["--", "-h", "--help", "--ledger", "x", "--json=1", "--debug"]).map(
            lambda t: [t]
        ),
    )
    rest = [arg for p in data.draw(st.lists(piece, max_size=5)) for arg in p]
    fast = parse_audit_verify(["audit", "verify", *rest])
    if fast is None:
        return
    assert _click_params(provenance_cmd.audit_verify, rest) == fast.params(), rest


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify"],
        ["audit", "verify", "--json", "--vault"],
        ["audit", "verify", "--ledger", "ledger.db", "--json"],
    ],
)
def test_the_plain_audit_verify_forms_take_the_fast_path(argv: list[str]) -> None:
    fast = parse_audit_verify(argv)
    assert fast is not None
    assert _click_params(provenance_cmd.audit_verify, argv[2:]) == fast.params()


@pytest.mark.parametrize(
    "argv",
    [
        ["audit", "verify", "--ledger", "adir"],  # click: is a directory
        ["audit", "verify", "--ledger", "a.db", "--ledger", "b.db"],
        ["audit", "verify", "--ledger"],
        ["audit", "verify", "--ledger=x.db"],
        ["audit", "verify", "extra"],
        ["audit", "verify", "--help"],
        ["audit", "show", "x"],
        ["audit"],
        ["--debug", "audit", "verify"],
    ],
)
def test_other_audit_lines_are_left_to_click(
    files: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    assert parse_audit_verify(argv) is None


def test_the_audit_option_table_matches_the_click_command() -> None:
    options = [p for p in provenance_cmd.audit_verify.params if isinstance(p, click.Option)]
    by_spelling = {opt: param for param in options for opt in param.opts}
    assert set(AUDIT_VERIFY_OPTIONS) == set(by_spelling)
    assert len(options) == len(provenance_cmd.audit_verify.params)  # no argument either
    for spelling, (dest, kind) in AUDIT_VERIFY_OPTIONS.items():
        param = by_spelling[spelling]
        assert param.name == dest
        assert not param.multiple
        assert param.is_flag == (kind == "flag")


# -- inspect -------------------------------------------------------------------------------


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_what_the_inspect_fast_path_takes_click_parses_the_same(
    files: Path, data: st.DataObject
) -> None:
    paths = [str(files / n) for n in ("in.txt", "adir", "missing.kcb")]
    piece = st.sampled_from(
        [*paths, "-", "", "--json", "--", "-h", "--help", "--json=1", "--debug", "-x"]
    )
    rest = data.draw(st.lists(piece, max_size=4))
    fast = parse_inspect(["inspect", *rest])
    if fast is None:
        return
    assert _click_params(bundle_cmd.inspect, rest) == fast.params(), rest


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "handover.kcb"],
        ["inspect", "--json", "handover.kcb"],
        ["inspect", "handover.kcb", "--json"],
        ["inspect", "-"],
    ],
)
def test_the_plain_inspect_forms_take_the_fast_path(argv: list[str]) -> None:
    fast = parse_inspect(argv)
    assert fast is not None
    assert _click_params(bundle_cmd.inspect, argv[1:]) == fast.params()


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect"],  # click: missing BUNDLE
        ["inspect", "--json"],
        ["inspect", "a.kcb", "b.kcb"],
        ["inspect", "adir"],  # click: is a directory
        ["inspect", ""],
        ["inspect", "--", "a.kcb"],
        ["inspect", "--json=1", "a.kcb"],
        ["inspect", "--help"],
        ["inspect", "-x", "a.kcb"],
        ["--debug", "inspect", "a.kcb"],
        ["seal", "a.kcb"],
    ],
)
def test_other_inspect_lines_are_left_to_click(
    files: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(files)
    assert parse_inspect(argv) is None


def test_the_inspect_parameters_are_what_the_fast_path_knows() -> None:
    params = {p.name: p for p in bundle_cmd.inspect.params}
    assert set(params) == {"bundle_file", "as_json"}
    assert isinstance(params["bundle_file"], click.Argument)
    assert params["as_json"].opts == ["--json"]
    assert params["as_json"].is_flag  # type: ignore[attr-defined]


def _sealed_bundle(base: Path, *, tamper: bool) -> Path:
    from datetime import timedelta

    from keycourier import bundle
    from keycourier.bundle import text as bundle_text
    from keycourier.redact import Secret

    sealed = bundle.seal(
        bundle.Credentials("quickbooks", "AB" + "c" * 48, Secret("d" * 40)),
        sender=bundle.KeycourierIdentity.generate(),
        recipients=[bundle.KeycourierIdentity.generate().public().recipient],
        policy=bundle.PolicyStamp("sha256:" + "0" * 64, "pass"),
        lifetime=timedelta(days=1),
        environment="production",
        partner="Fast Path Ltd",
    )
    text = sealed.text
    if tamper:  # a signature that does not verify: exit 4
        parsed = bundle.parse(text)
        text = bundle_text.write(parsed.manifest_bytes, bytes(64), parsed.payload)
    path = base / ("tampered.kcb" if tamper else "handover.kcb")
    path.write_bytes(text)
    return path


@pytest.mark.parametrize("tamper", [False, True])
@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_prints_and_exits_as_click_does(
    tmp_path: Path, tamper: bool, as_json: bool
) -> None:
    path = _sealed_bundle(tmp_path, tamper=tamper)
    args = ["inspect", *(["--json"] if as_json else []), str(path)]
    fast = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "keycourier", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in fast.stderr.splitlines()]
    assert "keycourier.cli.bundle_ops" in imported
    assert "click" not in imported
    fast_err = "".join(
        line + "\n" for line in fast.stderr.splitlines() if not line.startswith("import time:")
    )
    clicked = subprocess.run(
        [sys.executable, "-c", "from keycourier.cli.main import run; run()", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (fast.returncode, fast.stdout, fast_err) == (
        clicked.returncode,
        clicked.stdout,
        clicked.stderr,
    )
    assert fast.returncode == (4 if tamper else 0)
