# Sourced by the integration scripts that drive one real ce-node process: a scratch folder, the
# node stopped and the folder removed on exit, fail(), and start_node.
#   start_node SOURCE_DIR BUILD_DIR [--set key=value ...]
# starts ce-node with config/local.ini (cloud + edge in one node, ports picked by the system, the
# log in $work/node.log) and sets cloud_port and http_port once it is ready.
work=$(mktemp -d)
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }

start_node() {
  local src=$1 build=$2
  shift 2
  "$build/tools/ce-node" --config "$src/config/local.ini" --set ce.listen.port=0 --set ce.http.port=0 \
    --set ce.log.level=warning "$@" --ready-file "$work/ready" 2>"$work/node.log" &
  node_pid=$!
  for _ in $(seq 1200); do [ -s "$work/ready" ] && break; sleep 0.1; done  # a generous cap: CI runs it beside other tests
  [ -s "$work/ready" ] || { cat "$work/node.log"; fail "ce-node did not come up"; }
  read -r cloud_port http_port <"$work/ready"
}
