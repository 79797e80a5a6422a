"""Download a D4RL file into a cache: streamed, resumable, verified, atomic.

D4RL files are hundreds of megabytes on a server that drops long transfers, so a
download goes to `<file>.part`, an interrupted one continues with an HTTP Range request,
and only a file of the announced size (and recorded sha256, where one is known) is
renamed into place. A sidecar `<file>.json` records size and sha256, so a cached file is
checked before it is reused and a damaged one is fetched again.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm.auto import tqdm

from odt.atomic import atomic_path
from odt.lock import file_lock

CHUNK = 1 << 20
MAX_STALLS = 3  # consecutive attempts that bring no new byte before giving up
MAX_ATTEMPTS = 100  # attempts in all, however much each brings


class DownloadError(RuntimeError):
    """The file could not be downloaded or failed verification; one line naming the URL and a way out."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_path(url: str, cache_dir: str | os.PathLike) -> Path:
    name = Path(urlparse(url).path).name
    if not name:
        raise DownloadError(f"{url}: the URL names no file")
    return Path(cache_dir) / name


def _unreachable(url: str, dest: Path, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {url} ({reason}); without network, copy the file to {dest} "
        f"or pass --source file --path FILE, or use --source generate (locomotion tasks)"
    )


def _total_from(resp: http.client.HTTPResponse, offset: int) -> int | None:
    """The full file size the response announces (Content-Range for 206, Content-Length for 200)."""
    if resp.status == 206:
        match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            return None
        return int(match.group(3)) if match.group(3) != "*" else None
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


def _stream(url: str, part: Path, *, timeout: float, bar) -> tuple[int | None, bool]:
    """One request: append to `part` from its current size. Returns (announced total, finished cleanly)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # asked past the end: the .part may already be whole
            match = re.match(r"bytes \*/(\d+)", err.headers.get("Content-Range", "") if err.headers else "")
            return (int(match.group(1)) if match else None), True
        raise
    with resp:
        if resp.status == 200 and offset:  # the server ignored Range: start over
            offset = 0
            part.write_bytes(b"")
            bar.reset()
        total = _total_from(resp, offset)
        if resp.status == 206 and total is None:
            raise DownloadError(f"{url}: the server answered a Range request with an unusable Content-Range; "
                                f"delete {part} and try again")
        if total is not None:
            bar.total = total
            bar.refresh()
        with open(part, "ab") as f:
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError):
                return total, False
    return total, True


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify size and sha256, rename into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    total = None
    stalls = 0
    with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, file=sys.stderr,
              initial=part.stat().st_size if part.exists() else 0, mininterval=1.0) as bar:
        for _ in range(MAX_ATTEMPTS):
            before = part.stat().st_size if part.exists() else 0
            try:
                total, clean = _stream(url, part, timeout=timeout, bar=bar)
            except urllib.error.HTTPError as err:
                raise _unreachable(url, dest, f"HTTP {err.code} {err.reason}") from None
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                if before == 0 and not part.exists():
                    raise _unreachable(url, dest, reason) from None
                clean = False
            size = part.stat().st_size if part.exists() else 0
            if clean and (total is None or size >= total):
                break
            stalls = 0 if size > before else stalls + 1
            if stalls >= MAX_STALLS:
                raise _unreachable(url, dest, f"the connection keeps dropping at byte {size}")
        else:
            raise _unreachable(url, dest, f"still incomplete after {MAX_ATTEMPTS} attempts")
    size = part.stat().st_size
    if total is not None and size != total:
        part.unlink()
        raise DownloadError(
            f"{url}: got {size} bytes but the server announced {total}; the partial file was removed, try again"
        )
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the recorded {sha256}; the file is corrupted "
                            f"(removed), try again or supply the file with --source file --path FILE")
    os.chmod(part, 0o644)
    os.replace(part, dest)
    _write_sidecar(dest, {"url": url, "size": size, "sha256": digest})
    return dest


def _write_sidecar(dest: Path, record: dict) -> None:
    with atomic_path(dest.with_name(dest.name + ".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def cached_ok(dest: Path, sha256: str | None = None) -> bool:
    """A cached file is reused when it matches its sidecar's size and sha256 (and the recorded sha256)."""
    side = dest.with_name(dest.name + ".json")
    if not dest.is_file():
        return False
    want = sha256
    if side.is_file():
        try:
            record = json.loads(side.read_text())
        except ValueError:
            return False
        if dest.stat().st_size != record.get("size"):
            return False
        want = want or record.get("sha256")
    elif not want:  # placed by hand: trust it (the loader still checks the layout)
        return True
    return sha256_file(dest) == want.lower()


def fetch_d4rl(url: str, cache_dir: str | os.PathLike, *, sha256: str | None = None, progress: bool = True,
               timeout: float = 60.0) -> Path:
    """The cached copy of `url` under `cache_dir` if it is intact, else a fresh (resumed) download."""
    dest = cached_path(url, cache_dir)
    with file_lock(dest.with_name(dest.name + ".lock")):
        if cached_ok(dest, sha256):
            return dest
        if dest.exists():
            dest.unlink()  # damaged: fetch it again
        return download(url, dest, sha256=sha256, progress=progress, timeout=timeout)
