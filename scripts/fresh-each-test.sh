#!/usr/bin/env bash
# Order independence: runs every test binary of the workspace as the FIRST
# thing after scripts/deps.sh on a brand-new machine (scripts/fresh-machine.sh
# --after-deps: a new overlay per binary, so nothing another test left —
# directories, config files, daemons, the cached test guest — is there).
# Prints one line per binary and a summary; exit 1 if any failed.
#
#   sudo ./scripts/fresh-each-test.sh                 # every test binary
#   sudo ./scripts/fresh-each-test.sh nubo-tests:capture nubo-agent:lib   # some
#
# The build output is shared between the runs (scripts/fresh-machine.sh keeps
# its target directory); logs go to $NUBO_FRESH_DIR/each/<crate>-<target>.log.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${NUBO_FRESH_DIR:-/var/tmp/nubo-fresh}
mkdir -p "$DIR/each"

if (($#)); then
  targets=("$@")
else
  # crate:lib for unit tests, crate:bin:NAME for a binary's unit tests,
  # crate:NAME for an integration test.
  mapfile -t targets < <(cargo metadata --no-deps --format-version 1 --manifest-path "$HERE/../Cargo.toml" |
    python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        k = t["kind"][0]
        if k == "lib":
            print(p["name"] + ":lib")
        elif k == "bin":
            print(p["name"] + ":bin:" + t["name"])
        elif k == "test":
            print(p["name"] + ":" + t["name"])
')
fi

failed=()
for t in "${targets[@]}"; do
  IFS=: read -r crate kind name <<<"$t"
  case "$kind" in
    lib) sel="--lib" ;;
    bin) sel="--bin $name" ;;
    *) sel="--test $kind" ;;
  esac
  log=$DIR/each/${t//:/-}.log
  start=$(date +%s)
  if "$HERE/fresh-machine.sh" --after-deps -- bash -c \
    "cargo build --workspace --bins -q && cargo test -q -p $crate $sel -- --test-threads=\${NUBO_TEST_THREADS:-2}" \
    >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed+=("$t")
  fi
  printf '%-40s %-7s %4ss  %s\n' "$t" "$result" $(($(date +%s) - start)) "$log"
done
echo "== ${#targets[@]} test binaries, ${#failed[@]} failed${failed:+: ${failed[*]}}"
((${#failed[@]} == 0))
