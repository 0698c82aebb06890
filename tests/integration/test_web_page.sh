#!/usr/bin/env bash
# The web page in a real browser: a ce-node process (cloud + edge in one node, the shipped model,
# the HTTP API on an ephemeral port) and headless Chromium (Debian's chromium package) driven by
# puppeteer-core (installed into BUILD_DIR/npm-web by the http_web_references fixture): the page loads,
# takes θ, mode and a prompt, streams a completion and shows it token by token (test_web_page.mjs
# says what is checked). Screenshots go to BUILD_DIR/web-page/.
#   test_web_page.sh BUILD_DIR SOURCE_DIR
# Exit 77 (skipped) where Node.js, Chromium or puppeteer-core is missing.
set -euo pipefail
build=$1
src=$2
chromium=${CE_CHROMIUM:-/usr/bin/chromium}
npm_dir="$build/npm-web"
skip() { echo "SKIP: $*"; exit 77; }
command -v node >/dev/null || skip "Node.js is not installed (bash scripts/setup --tests installs it)"
[ -x "$chromium" ] || skip "Chromium ($chromium) is not installed (bash scripts/setup --tests installs it)"
[ -d "$npm_dir/node_modules/puppeteer-core" ] ||
  skip "puppeteer-core is not installed in $npm_dir (the http_web_references fixture could not install it; see its output)"

# shellcheck source=tests/integration/node_process.sh
source "$src/tests/integration/node_process.sh"

start_node "$src" "$build"
echo "ce-node up: cloud port $cloud_port, HTTP http://127.0.0.1:$http_port/"

mkdir -p "$build/web-page"
if ! timeout 240 node "$src/tests/integration/test_web_page.mjs" "http://127.0.0.1:$http_port/" "$npm_dir" \
  "$chromium" "$build/web-page"; then
  echo "--- ce-node's log"; cat "$work/node.log"
  fail "the browser test failed"
fi
echo "PASS"
