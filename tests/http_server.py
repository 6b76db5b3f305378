"""A real loopback HTTP server for download tests, and tiny test archives to serve.

``LoopbackServer`` is a ``ThreadingHTTPServer`` on 127.0.0.1 (port 0) in a daemon thread. It serves in-memory
files with ``Range`` support and logs every request (path + Range header). Switches, per path:
``cut_after[path] = n`` drops the connection after ``n`` body bytes (once, then cleared), ``corrupt.add(path)``
serves the same length of wrong bytes, ``fail[path] = (status, times)`` answers ``status`` ``times`` times,
``redirect[path] = other`` answers 302 to ``other``; ``range_support = False`` ignores Range headers;
``retry_after[path] = value`` adds that ``Retry-After`` header to the ``fail`` answers.

Import as ``from http_server import LoopbackServer, make_tar, tiny_png`` (``tests/`` is on pytest's pythonpath).
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import struct
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Hit:
    path: str
    range: str | None


class LoopbackServer:
    """See the module docstring; use as a context manager."""

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.hits: list[Hit] = []
        self.cut_after: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.fail: dict[str, tuple[int, int]] = {}
        self.redirect: dict[str, str] = {}
        self.retry_after: dict[str, str] = {}
        self.range_support = True
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def hits_for(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == "/" + path.lstrip("/")]

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                key = path.lstrip("/")
                rng = self.headers.get("Range")
                with server._lock:
                    server.hits.append(Hit(path, rng))
                    fail = server.fail.get(key)
                    if fail and fail[1] > 0:
                        server.fail[key] = (fail[0], fail[1] - 1)
                    cut = server.cut_after.pop(key, None)
                if key in server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.url(server.redirect[key]))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fail and fail[1] > 0:
                    self._empty(fail[0], server.retry_after.get(key))
                    return
                if key not in server.files:
                    self._empty(404)
                    return
                data = server.files[key]
                if key in server.corrupt:
                    data = bytes(b ^ 0xFF for b in data)
                start = 0
                status = 200
                if rng and server.range_support:
                    m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
                    if m:
                        start = int(m.group(1))
                        if start >= len(data):
                            self.send_response(416)
                            self.send_header("Content-Range", f"bytes */{len(data)}")
                            self.send_header("Content-Length", "0")
                            self.end_headers()
                            return
                        status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _empty(self, status: int, retry_after: str | None = None) -> None:
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


def tiny_png(seed: int, size: int = 32) -> bytes:
    """A valid 8-bit grayscale PNG of ``size``² pixels whose content depends on ``seed``."""
    raw = b"".join(b"\x00" + bytes((x * 7 + y * 3 + seed * 11) % 256 for x in range(size)) for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def make_tar(members: dict[str, bytes], *, links: dict[str, str] | None = None, gz: bool = True) -> bytes:
    """A tar(.gz) holding ``members`` (name → bytes) and optional symlinks (name → target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def make_zip(members: dict[str, bytes]) -> bytes:
    """A zip holding ``members`` (name → bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def nih_part(part: int, n: int = 3) -> tuple[dict[str, bytes], bytes]:
    """Members and bytes of a fake ``images_NNN.tar.gz`` holding ``n`` tiny PNGs under ``images/``."""
    members = {f"images/{part:05d}{i:03d}_000.png": tiny_png(part * 100 + i) for i in range(n)}
    return members, make_tar(members)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
    "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
    "Fracture,Support Devices"
)


def chexpert_members(with_train: bool = True) -> dict[str, bytes]:
    """A tiny CheXpert-v1.0-small tree: two training images, one validation image and the CSVs."""
    root = "CheXpert-v1.0-small"
    members = {
        f"{root}/train/patient00001/study1/view1_frontal.jpg": tiny_png(1),
        f"{root}/train/patient00002/study1/view1_frontal.jpg": tiny_png(2),
        f"{root}/valid/patient64541/study1/view1_frontal.jpg": tiny_png(3),
    }
    row = ",Female,68,Frontal,AP,1.0,,,,,,,,,,,,,1.0"
    if with_train:
        members[f"{root}/train.csv"] = (
            f"{CHEXPERT_HEADER}\n{root}/train/patient00001/study1/view1_frontal.jpg{row}\n"
            f"{root}/train/patient00002/study1/view1_frontal.jpg{row}\n"
        ).encode()
    members[f"{root}/valid.csv"] = (
        f"{CHEXPERT_HEADER}\n{root}/valid/patient64541/study1/view1_frontal.jpg{row}\n".encode()
    )
    return members
