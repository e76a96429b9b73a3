#!/usr/bin/env bash
# Fetches the public-domain books that flashmoe's default model was trained on from Debian's archive
# (packages, never the network at run time) and builds data/corpus/{train.jsonl,eval.jsonl,eval.txt}:
# the training part and the held-out evaluation text (see tools/prepare_corpus.py, docs/default_model.md).
#
#   scripts/get_corpus.sh [OUT_DIR]      (default: data/corpus in the repository, git-ignored)
#
# Needs: apt-get (Debian 12), the Debian package diatheke, and python3 with the PyPI package rdata;
# installs what is missing. The package versions below are the ones the default model was trained
# on; where Debian no longer carries one, the current version is taken and a warning printed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/data/corpus}"
packages=(sword-text-kjv=14.3-1 sword-text-web=426.0-1 sword-comm-tdavid=2.1-1 r-cran-janeaustenr=1.0.0-1)

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ! command -v diatheke >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq diatheke
fi
python3 -c "import rdata" 2>/dev/null || python3 -m pip install -q rdata

mkdir -p "$out/debs"
rm -rf "$out/root" "$out/sword-home"
mkdir -p "$out/root"
cd "$out/debs"
for spec in "${packages[@]}"; do
  name="${spec%%=*}"
  if ! ls "${name}"_*.deb >/dev/null 2>&1; then
    if ! apt-get download "$spec" 2>/dev/null && ! { $sudo apt-get update -qq && apt-get download "$spec"; }; then
      echo "get_corpus: $spec is not in the archive; taking the current $name (the text may differ)" >&2
      apt-get download "$name"
    fi
  fi
done
for deb in *.deb; do
  dpkg -x "$deb" "$out/root"
done
sha256sum ./*.deb > "$out/debs.sha256"
python3 "$repo/tools/prepare_corpus.py" --root "$out/root" --out "$out"
