#!/usr/bin/env bash
# Coverage-guided fuzzing of medsee's input paths with cargo fuzz (libFuzzer), each target from
# its committed seeds. Usage: scripts/fuzz.sh [RUNS] [TARGET...]   (default: 1000000 runs each of
# image gguf weights question). Installs a nightly toolchain and cargo-fuzz when missing; writes
# the executions and time of each run to fuzz/results.json. The question target reads the
# converted tokenizer (run the README's main command first).
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$MEDSEE_ROOT"
runs="${1:-1000000}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image gguf weights question)

step "fuzzing toolchain"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

seeds_of() {
  case "$1" in
    image) echo "fuzz/seeds/image tests/fixtures/bad tests/fixtures/dicom" ;;
    *) echo "fuzz/seeds/$1" ;;
  esac
}

results=fuzz/results.json
[ -f "$results" ] || echo '{}' > "$results"
for target in "${targets[@]}"; do
  step "fuzz $target: $runs runs"
  mkdir -p "fuzz/corpus/$target"
  log="$(mktemp)"
  # A separate target folder: the instrumented nightly build must not clobber the normal one.
  # shellcheck disable=SC2046
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/fuzz" cargo +nightly fuzz run --fuzz-dir fuzz "$target" \
    "fuzz/corpus/$target" $(seeds_of "$target") -- -runs="$runs" -rss_limit_mb=4096 -timeout=30 >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    grep -E '^(#[0-9]+|   Compiling)' "$log" | tail -n 1 || true
  done
  status=0
  wait "$pid" || status=$?
  done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)"
  if [ "$status" -ne 0 ] || [ -z "$done_line" ]; then
    tail -n 40 "$log"
    die "fuzz target $target failed (crash inputs are under fuzz/artifacts/$target)"
  fi
  echo "$done_line"
  python3 - "$results" "$target" "$done_line" <<'PY'
import json, re, sys, datetime
path, target, line = sys.argv[1:]
runs, seconds = map(int, re.match(r"Done (\d+) runs in (\d+) second", line).groups())
data = json.load(open(path))
data[target] = {"runs": runs, "seconds": seconds, "crashes": 0, "date": datetime.date.today().isoformat()}
json.dump(data, open(path, "w"), indent=2, sort_keys=True)
PY
done
step "fuzzing done: $(cat "$results" | tr -d '\n ')"
