#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, only when they are missing.
# Needs root (CI runs as root); prints what it does.
set -euo pipefail
wanted=()
for spec in "$@"; do wanted+=("$spec"); done
[ ${#wanted[@]} -gt 0 ] || exit 0
missing=()
for spec in "${wanted[@]}"; do
  cmd="${spec%%:*}"; pkg="${spec##*:}"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
