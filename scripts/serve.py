#!/usr/bin/env python3
"""Serve the medsee page on 127.0.0.1: www/ at /, the converted weights at /models/.

Sends the headers the page relies on: correct MIME types (application/wasm), cross-origin
isolation (COOP/COEP), and a Content-Security-Policy that allows nothing but this origin.
"""
import argparse
import functools
import http.server
import mimetypes
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WWW = ROOT / "www"
MODELS = ROOT / "models" / "converted"
# The widget demo's sample image is a committed test fixture (a dermoscopy photo from the data set's
# validation split, 256 px), served from where it lives rather than copied.
DEMO_IMAGE = ROOT / "tests" / "fixtures" / "litemedsam" / "dermoscopy_lesion" / "input.png"

CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
       "img-src 'self' blob: data:; style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".js": "text/javascript", ".bpk": "application/octet-stream"}

    def translate_path(self, path):
        clean = path.split("?", 1)[0].split("#", 1)[0]
        if clean == "/demo/sample.png":
            return str(DEMO_IMAGE)
        if clean.startswith("/models/"):
            target = (MODELS / clean[len("/models/"):]).resolve()
            return str(target) if target.is_relative_to(MODELS.resolve()) else str(MODELS / "__denied__")
        return super().translate_path(path)

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if not (WWW / "pkg" / "medsee_bg.wasm").exists():
        sys.exit("serve: www/pkg is missing; build the wasm first (scripts/build-web.sh)")
    if not (MODELS / "index.json").exists():
        sys.exit("serve: models/converted is missing; run `scripts/medsee convert` first")
    handler = functools.partial(Handler, directory=str(WWW))
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        server.quiet = args.quiet
        print(f"medsee is served at http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
