#!/bin/sh
# The MC's install steps, in one place: the Dockerfile runs exactly this, and
# tests/test_build.py runs it into a fresh directory and starts the daemon from it.
#
#   scripts/install.sh PREFIX      e.g. /opt/mc/venv
#
# PREFIX becomes a virtualenv holding the package and every dependency at the
# version constraints.txt pins: PREFIX/bin/twistd (the daemon: twistd mc),
# PREFIX/bin/mc-drain (the preStop hook and upgrades), PREFIX/share/mc/mc.tac.
# PYTHON picks the interpreter (default python3). pip's cache is used when there
# is one, so a repeated install (the tests) does not download again.
set -eu
prefix=$1
src=$(cd "$(dirname "$0")/.." && pwd)
"${PYTHON:-python3}" -m venv "$prefix"
"$prefix/bin/python" -m pip install -q --disable-pip-version-check \
    -c "$src/constraints.txt" "$src"
# twistd writes its plugin cache next to the plugins on first use: write it now,
# while the install may, since the image runs with a read-only root filesystem.
"$prefix/bin/twistd" --help >/dev/null
"$prefix/bin/twistd" mc --help >/dev/null
