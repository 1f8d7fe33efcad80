#!/usr/bin/env python3
"""Serve the medsee page on 127.0.0.1: www/ at /, the converted weights at /models/.

Sends the headers the page relies on: correct MIME types (application/wasm), cross-origin
isolation (COOP/COEP), and a Content-Security-Policy that allows nothing but this origin.
Serves gzip to browsers that accept it, as any static host would (the wasm shrinks 5x, the 4-bit
weights ~6 %); compressed copies are made once per file version and kept in a cache folder.
"""
import argparse
import email.utils
import functools
import gzip
import hashlib
import http.server
import mimetypes
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WWW = ROOT / "www"
MODELS = ROOT / "models" / "converted"
# The widget demo's sample image is a committed test fixture (a dermoscopy photo from the data set's
# validation split, 256 px), served from where it lives rather than copied.
DEMO_IMAGE = ROOT / "tests" / "fixtures" / "litemedsam" / "dermoscopy_lesion" / "input.png"

CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
       "img-src 'self' blob: data:; style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'")

# Everything the page fetches except images, which are compressed already.
COMPRESSIBLE = {".wasm", ".js", ".mjs", ".json", ".bpk", ".html", ".css"}
GZIP_CACHE = Path(os.environ.get("MEDSEE_GZIP_CACHE", Path(tempfile.gettempdir()) / "medsee-gzip"))

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

    def send_head(self):
        path = Path(self.translate_path(self.path))
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        suffix = path.suffix if not path.suffix.startswith(".part") else Path(path.stem).suffix
        if not (accepts_gzip and suffix in COMPRESSIBLE and path.is_file()):
            return super().send_head()
        modified = int(path.stat().st_mtime)
        since = self.headers.get("If-Modified-Since")
        try:
            unchanged = since is not None and email.utils.parsedate_to_datetime(since).timestamp() >= modified
        except (TypeError, ValueError):
            unchanged = False
        if unchanged:
            self.send_response(304)
            self.end_headers()
            return None
        compressed = gzipped(path)
        self.send_response(200)
        self.send_header("Last-Modified", self.date_time_string(modified))
        self.send_header("Content-Type", self.guess_type(str(path.with_suffix(suffix))))
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept-Encoding")
        self.send_header("Content-Length", str(compressed.stat().st_size))
        self.end_headers()
        return open(compressed, "rb")

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


def gzipped(path):
    """The gzip copy of `path` in the cache, made on first use for this size and mtime."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    target = GZIP_CACHE / f"{key}.gz"
    if not target.exists():
        GZIP_CACHE.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.{os.urandom(4).hex()}.partial")
        with open(path, "rb") as src, gzip.open(partial, "wb", compresslevel=6) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.replace(partial, target)
    return target


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
