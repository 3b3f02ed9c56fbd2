#!/usr/bin/env bash
# The Makefile's setup and build on a fresh machine where they cannot
# succeed: each case must stop at once with one line saying what to do, and
# leave no .venv that a later `make` would take for a working one. Runs
# `make setup` / `make build` in a scratch copy with stand-in interpreters
# and a PATH without a C++ compiler (no network is used: every case stops
# before pip or cargo).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
real=$(PATH=$(echo "$PATH" | tr ':' '\n' | grep -v '/\.venv/' | paste -sd:) command -v python3)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/p/scripts" "$tmp/py310" "$tmp/noensurepip"
cp "$here/Makefile" "$tmp/p/"
cp "$here/scripts/requirements.txt" "$tmp/p/scripts/"
# A Python 3.10 (Ubuntu 22.04's): the pinned numpy and onnxruntime have no wheels for it.
cat > "$tmp/py310/python3" <<EOF
#!/usr/bin/env bash
if [ "\$1" = "-c" ]; then exec "$real" -c "import sys; sys.version_info = (3, 10, 12, 'final', 0)
\$2"; fi
exec "$real" "\$@"
EOF
# Debian without python3-venv: \`python3 -m venv\` leaves a .venv without pip and fails.
cat > "$tmp/noensurepip/python3" <<EOF
#!/usr/bin/env bash
if [ "\$1" = "-m" ] && [ "\$2" = "venv" ]; then
  "$real" -m venv --without-pip "\$3"
  echo "The virtual environment was not created successfully because ensurepip is not available."
  exit 1
fi
exec "$real" "\$@"
EOF
chmod +x "$tmp/py310/python3" "$tmp/noensurepip/python3"

fail() { echo "test_setup: $1"; exit 1; }
expect() { # name, PATH prefix, expected text, make arguments…
  local out name=$1 prefix=$2 text=$3
  shift 3
  if out=$(cd "$tmp/p" && PATH="$prefix:$PATH" make -s setup "$@" 2>&1); then fail "$name: make setup succeeded"; fi
  grep -qF "$text" <<<"$out" || fail "$name: expected '$text' in: $out"
  echo "ok: $name"
}
expect "Python 3.10" "$tmp/py310" "Python 3.10: the pinned packages of scripts/requirements.txt (torch 2.13, numpy 2.4, onnxruntime 1.32) have wheels for Python 3.11 to 3.14; install one of those and run make PYTHON=python3.12"
[ ! -e "$tmp/p/.venv" ] || fail "Python 3.10: a .venv was left"
expect "no ensurepip" "$tmp/noensurepip" "could not create .venv with pip (on Debian/Ubuntu: apt install python3-venv), then run make again"
[ ! -e "$tmp/p/.venv/bin/pip" ] || fail "no ensurepip: pip appeared"
# The pip-less .venv it left is not taken for a working one: the next make, still without ensurepip, says the same.
expect "no ensurepip, again" "$tmp/noensurepip" "could not create .venv with pip"
# A .venv whose Python the wheels lack is not used either: made again with PYTHON, here one that is missing.
rm -rf "$tmp/p/.venv" && "$tmp/py310/python3" -m venv "$tmp/p/.venv" && ln -sf "$tmp/py310/python3" "$tmp/p/.venv/bin/python"
expect "a .venv of Python 3.10, PYTHON missing" "" "no-such-python not found: install Python 3.11 to 3.14 first" PYTHON=no-such-python
[ ! -e "$tmp/p/.venv" ] || fail "the .venv of Python 3.10 was kept"
# No C++ compiler (Rust itself needs only a C linker): `make build` says so before cargo starts.
mkdir -p "$tmp/p/.venv" "$tmp/bin"
touch "$tmp/p/.venv/.installed-$(sed -n 's/^TORCH_VERSION := //p' "$here/Makefile")"
ln -s "$(command -v bash)" "$tmp/bin/bash"
ln -s "$(command -v make)" "$tmp/bin/make"
if out=$(cd "$tmp/p" && env -u CXX PATH="$tmp/bin" make -s build 2>&1); then fail "no C++ compiler: make build succeeded"; fi
grep -qF "no C++ compiler found (c++): tch's libtorch bindings are C++; install one (Debian/Ubuntu: apt install g++) or set CXX" <<<"$out" ||
  fail "no C++ compiler: expected the message in: $out"
echo "ok: no C++ compiler"
