#!/usr/bin/env bash
# Installs the Debian 12 packages sluice builds with. Idempotent: skips apt when all are present.
set -euo pipefail
packages=(g++ meson ninja-build pkg-config cmake liburing-dev libfmt-dev doctest-dev libboost-dev
          nlohmann-json3-dev libboost-context-dev libpcre2-dev libcli11-dev libxxhash-dev python3 python3-venv
          clang libclang-rt-14-dev   # clang: the libFuzzer targets (scripts/fuzz.sh)
          slurm-wlm munge)           # a real single-node Slurm for tests/scripts/scale_out_test.sh
# kubectl (Debian's kubernetes-client) checks the Kubernetes manifest; a kubectl already on the
# machine (e.g. another vendor's package owning /usr/bin/kubectl) is used as it is.
command -v kubectl >/dev/null || packages+=(kubernetes-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The official openai client for the sluice serve tests (tests/serve/), in .venv beside the tree:
# Debian's Python is externally managed, so pip installs into a virtual environment.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$venv/bin/python3" -c "import openai" 2>/dev/null; then
  echo "installing the openai client into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install -q --disable-pip-version-check "openai==3.63.0"
fi
