#!/usr/bin/env bash
# Installs the npm packages of a package.json into BUILD_DIR/NAME, once (again when the
# package.json changes): the reference implementations and drivers some tests run.
#   install-npm-packages.sh BUILD_DIR PACKAGE_JSON NAME [--optional]
# --optional: where npm is missing or the registry cannot be reached, install nothing and succeed
# (the tests that need the packages then report themselves skipped and say why).
set -euo pipefail
build=$1
manifest=$2
dir="$build/$3"
optional=${4:-}
give_up() {
  if [ "$optional" = --optional ]; then
    echo "$1: nothing installed"
    exit 0
  fi
  echo "FAIL: $1"
  exit 1
}
if [ -d "$dir/node_modules" ] && cmp -s "$manifest" "$dir/package.json"; then
  echo "npm packages of $manifest already installed in $dir"
  exit 0
fi
command -v npm >/dev/null || give_up "npm is not installed (bash scripts/setup --tests installs it)"
mkdir -p "$dir"
cp "$manifest" "$dir/package.json"
rm -rf "$dir/node_modules"
echo "installing the npm packages of $manifest into $dir"
# PUPPETEER_SKIP_DOWNLOAD: puppeteer-core drives the system's Chromium, never a downloaded one.
if ! (cd "$dir" && PUPPETEER_SKIP_DOWNLOAD=1 timeout 600 npm install --no-audit --no-fund --no-package-lock --loglevel=error); then
  rm -rf "$dir/node_modules" "$dir/package.json"
  give_up "npm could not install the packages of $manifest (no registry?)"
fi
echo "installed: $(cd "$dir/node_modules" && ls -d * @*/* 2>/dev/null | grep -v '^@[^/]*$' | tr '\n' ' ')"
