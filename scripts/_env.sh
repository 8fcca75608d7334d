# Sourced by scripts/test, scripts/demo and scripts/bench*: create or refresh
# .venv, install keycourier with its test extra, and install Debian's age.
# Idempotent and quiet when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

pick_python() {
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "keycourier: error: Python >= 3.11 is required" >&2
  return 1
}

if [ ! -x "$PY" ]; then
  echo "keycourier: creating .venv" >&2
  "$(pick_python)" -m venv "$VENV"
fi

stamp="$VENV/.keycourier-stamp"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "keycourier: installing Python dependencies into .venv" >&2
  "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$PY" -m pip install -q --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
fi

if ! command -v age >/dev/null 2>&1; then
  echo "keycourier: installing Debian's age" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq age >/dev/null
fi

# What only the test suite needs (called by scripts/test): Go's reference
# transparency-log code (Debian's golang-go and golang-golang-x-mod-dev, built
# offline), Debian's chromium (renders the audit report), and the independent
# OAuth2 server the oauth2 dialect is tested
# against (npm).
ensure_test_tools() {
  local debs=()
  command -v go >/dev/null 2>&1 || debs+=(golang-go)
  [ -d /usr/share/gocode/src/golang.org/x/mod/sumdb ] || debs+=(golang-golang-x-mod-dev)
  command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
  command -v chromium >/dev/null 2>&1 || debs+=(chromium)
  if [ ${#debs[@]} -gt 0 ]; then
    echo "keycourier: installing Debian's ${debs[*]}" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
  fi
  local prefix="$VENV/npm" package="oauth2-mock-server@9.3.0"
  if [ ! -d "$prefix/node_modules/oauth2-mock-server" ]; then
    echo "keycourier: installing $package into .venv/npm" >&2
    npm install --prefix "$prefix" --no-audit --no-fund --silent "$package" >/dev/null
  fi
  export KEYCOURIER_TEST_OAUTH2_SERVER_DIR="$prefix"
}

export PATH="$VENV/bin:$PATH"
