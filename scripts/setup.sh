#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently. Always: the pinned source weights.
#   --web      wasm32 target and wasm-bindgen-cli of the exact version in Cargo.lock
#   --browser  Debian's chromium and playwright-core (for the browser tests)
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$MEDSEE_ROOT"

want_web=0; want_browser=0
for arg in "$@"; do
  case "$arg" in
    --web) want_web=1 ;;
    --browser) want_browser=1 ;;
    *) die "unknown option $arg (expected --web, --browser)" ;;
  esac
done

step "toolchain"
command -v cargo >/dev/null || die "cargo not found; install Rust with rustup first"
command -v python3 >/dev/null || die "python3 not found"
echo "  $(cargo --version)"

if [ "$want_web" = 1 ]; then
  step "wasm toolchain"
  if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    echo "  [ok]   rust target wasm32-unknown-unknown"
  else
    echo "  [add]  rust target wasm32-unknown-unknown"
    rustup target add wasm32-unknown-unknown
  fi
  version="$(wasm_bindgen_version)"
  [ -n "$version" ] || die "wasm-bindgen is not in Cargo.lock"
  if command -v wasm-bindgen >/dev/null && [ "$(wasm-bindgen --version | awk '{print $2}')" = "$version" ]; then
    echo "  [ok]   wasm-bindgen-cli $version"
  else
    echo "  [build] wasm-bindgen-cli $version (matches Cargo.lock; takes a few minutes once)"
    # Not --locked: one of its locked dependencies was yanked from the registry.
    cargo install wasm-bindgen-cli --version "$version" --no-default-features --force
  fi
fi

if [ "$want_browser" = 1 ]; then
  step "browser for the end-to-end tests"
  if [ -x /usr/bin/chromium ]; then
    echo "  [ok]   $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
  else
    echo "  [apt]  chromium chromium-driver"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
    echo "  [ok]   $(/usr/bin/chromium --version)"
  fi
  if [ -d tests/browser/node_modules/playwright-core ]; then
    echo "  [ok]   playwright-core (tests/browser/node_modules)"
  else
    echo "  [npm]  playwright-core (no browser download)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  fi
fi

step "weights"
python3 scripts/fetch_weights.py
