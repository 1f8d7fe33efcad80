# Shared by the scripts: repository root, cargo target directory, progress helpers.
# A target directory beside the clone (../medsee-target) is reused when it exists, so CI and
# repeated runs don't rebuild Burn from scratch; otherwise ./target is used.
MEDSEE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d "$MEDSEE_ROOT/../medsee-target" ]; then
  export CARGO_TARGET_DIR="$(cd "$MEDSEE_ROOT/../medsee-target" && pwd)"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$MEDSEE_ROOT/target}"
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$MEDSEE_ROOT/Cargo.lock"
}
