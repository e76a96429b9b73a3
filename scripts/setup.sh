#!/usr/bin/env bash
# Installs what flashmoe needs to build and test on Debian 12, all from Debian's packages (clang and
# its runtime only for the parser fuzzers the test suite runs briefly).
set -euo pipefail
packages=(build-essential cmake pkg-config libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev
          libcli11-dev libfmt-dev libpcre2-dev liburing-dev libcpp-httplib-dev libreadline-dev libutf8proc-dev
          zlib1g-dev tmux libcairo2-dev
          python3 python3-pip  # the openai package for the server tests (below)
          clang libclang-rt-14-dev
          chromium  # chromium: the chat page test of flashmoe serve (headless)
          diatheke)  # diatheke: scripts/get_corpus.sh reads the evaluation text's SWORD modules with it
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# The openai client: the tests of flashmoe serve talk to it with the official Python package.
if ! python3 -c "import openai" 2>/dev/null; then
  python3 -m pip install --break-system-packages -q openai
fi
