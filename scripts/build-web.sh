#!/usr/bin/env bash
# Builds the wasm engine (release, SIMD128) and its JS bindings into www/pkg/.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$MEDSEE_ROOT"
step "wasm build (release, simd128; the first build takes a long while)"
RUSTFLAGS="-C target-feature=+simd128" cargo build --lib --release --target wasm32-unknown-unknown
step "wasm-bindgen → www/pkg"
# Without the name and producers sections: a quarter of the size (panic messages keep their text).
wasm-bindgen --target web --no-typescript --remove-name-section --remove-producers-section --out-dir www/pkg \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/medsee.wasm"
ls -l www/pkg/medsee_bg.wasm | awk '{printf "  www/pkg/medsee_bg.wasm: %.1f MB\n", $5/1e6}'
