#!/usr/bin/env bash
# The layering rules, checked on what the preprocessor actually reaches (not on the include lines
# alone): no header of actors/, messages/, config/ or model/text/ pulls in ATen or torch; model/, messages/
# and config/ know no CAF; config/ knows no model; only messages/codec.cpp includes the generated
# Cap'n Proto header.   check_layers.sh SOURCE_DIR
set -uo pipefail
src=$1
cd "$src"
status=0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
reaches() {  # reaches HEADER PATTERN: the preprocessed header includes a file matching PATTERN
  # Whole output to a file first: `g++ | grep -q` under pipefail reads a match as a failure.
  if ! g++ -std=c++17 -I. -E -x c++ "$1" -o "$work/out.ii" 2>"$work/err"; then
    echo "FAIL: $1 does not preprocess: $(head -3 "$work/err")"
    status=1
    return 1
  fi
  grep -E '^# [0-9]+ "' "$work/out.ii" | grep -E "$2" >/dev/null
}
for h in $(find actors messages config -name '*.hpp' | sort); do
  if reaches "$h" '/(ATen|torch|c10)/'; then echo "FAIL: $h reaches ATen/torch"; status=1; fi
done
for h in $(find model messages config -name '*.hpp' | sort); do
  if reaches "$h" '/caf/'; then echo "FAIL: $h reaches CAF"; status=1; fi
done
for h in $(find model/text -name '*.hpp' | sort); do  # the text part (ce_text) links no torch
  if reaches "$h" '/(ATen|torch|c10)/'; then echo "FAIL: $h reaches ATen/torch"; status=1; fi
done
for h in $(find config -name '*.hpp' | sort); do
  if reaches "$h" '"(\./)?model/'; then echo "FAIL: $h reaches model/"; status=1; fi
done
others=$(grep -rl --include='*.cpp' --include='*.hpp' 'protocol\.capnp\.h' actors messages model config tools tests linkem |
         grep -v '^messages/codec\.cpp$' || true)
if [ -n "$others" ]; then echo "FAIL: the generated capnp header is included by: $others"; status=1; fi
checked=$(find actors messages config model -name '*.hpp' | wc -l)
[ $status -eq 0 ] && echo "layering holds ($checked headers preprocessed)"
exit $status
