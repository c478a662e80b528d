#!/usr/bin/env bash
# Set up masterocr in ./.venv.   ./setup.sh         runtime only
#                                ./setup.sh --dev   + test tools
# Installs the Debian fonts/word lists the synthetic renderer uses (when run as root with apt-get), then the
# pinned Python requirements (torch==2.13.0 first, so nothing pulls a CUDA build), then the package itself.
set -euo pipefail
cd "$(dirname "$0")"
reqs=requirements.txt
[ "${1:-}" = "--dev" ] && reqs=requirements-dev.txt

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && [ -f debian-packages.txt ]; then
  pkgs=$(grep -v '^#' debian-packages.txt | xargs)
  missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done | xargs)
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null) \
      || echo "setup.sh: warning: could not install Debian packages ($missing); synthetic data falls back to DejaVu, the page test skips" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$reqs"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
echo "masterocr is set up in $(pwd)/.venv"
