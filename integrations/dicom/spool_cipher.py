"""The spool's at-rest encryption: AES-256-GCM over fixed-size chunks, streamed in both directions.

Why chunks: a multi-frame object can be hundreds of MB, and one AEAD over the whole file would need all
of it in memory to seal or to authenticate. Each chunk is sealed on its own, so memory stays at about one
chunk whichever way the file goes. The construction follows Tink's AES-GCM-HKDF streaming AEAD:
- file key = HKDF-SHA256(master key, salt = 32 random bytes kept in the header), so GCM nonces can never
  repeat across files, however many files one master key seals;
- nonce = 8-byte random prefix ‖ 32-bit chunk counter, so a chunk moved to another position fails;
- AAD = the whole header ‖ a last-chunk flag, so a file cut at a chunk boundary fails (its new last chunk
  was sealed as "not last"), and so does any change to the header (chunk size, salt, key id).

Layout. The 132-byte header has the shape of a Part 10 preamble and prefix with "VTEC" where a DICOM file
has "DICM", so a plaintext spool file can never pass for an encrypted one, nor the other way round:

    offset size
       0    8  magic b"VTSPOOL\\x1a"
       8    1  format version (1)
       9    4  chunk size in bytes, big-endian
      13    8  key id (see `SpoolKey.key_id`)
      21   32  HKDF salt
      53    8  nonce prefix
      61   67  zero
     128    4  b"VTEC"

then at least one chunk, each `ciphertext ‖ 16-byte tag`; every chunk but the last holds exactly
`chunk size` plaintext bytes, the last one 0..`chunk size` bytes.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from integrations.dicom.spool_key import SpoolKey

MAGIC = b"VTSPOOL\x1a"
MARKER = b"VTEC"
HEADER_SIZE = 132
FORMAT_VERSION = 1
TAG_SIZE = 16
CHUNK_SIZE = 1024 * 1024
# Bounds a reader accepts before the header is authenticated: a forged chunk size must not make it
# allocate gigabytes.
MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 4096, 16 * 1024 * 1024
_FIELDS = struct.Struct(">8sBI8s32s8s")  # magic, version, chunk size, key id, salt, nonce prefix
_HKDF_INFO = b"veritrace spool v1 file key"
_MAX_CHUNKS = 2**32


class SpoolIntegrityError(OSError):
    """A sealed spool file failed authentication (altered, truncated, reordered) or is not ours to open.

    An OSError, like EIO: every reader already treats a file it cannot read as unreadable, never as data.
    """


def is_sealed(head: bytes) -> bool:
    """True when `head` (the first `HEADER_SIZE` bytes of a file) starts an encrypted spool file."""
    return len(head) >= HEADER_SIZE and head[:8] == MAGIC and head[128:HEADER_SIZE] == MARKER


def _file_aead(key: SpoolKey, salt: bytes) -> AESGCM:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(key.material)
    return AESGCM(derived)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


class SealingWriter:
    """Encrypts what is written into `out`, sealing a chunk as soon as the next byte after it arrives.

    The last chunk is only known at `finish()`, so at most one chunk (plus one write) is buffered.
    """

    def __init__(self, out: BinaryIO, key: SpoolKey, *, chunk_size: int = CHUNK_SIZE) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}, got {chunk_size}")
        salt, self._prefix = os.urandom(32), os.urandom(8)
        fields = _FIELDS.pack(MAGIC, FORMAT_VERSION, chunk_size, key.key_id, salt, self._prefix)
        self._header = fields.ljust(128, b"\x00") + MARKER
        self._aead = _file_aead(key, salt)
        self._out = out
        self._chunk = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._finished = False
        out.write(self._header)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("write to a finished sealing writer")
        self._buffer += data
        while len(self._buffer) > self._chunk:
            with memoryview(self._buffer) as view:
                self._seal(view[: self._chunk], last=False)  # no copy of the chunk
            del self._buffer[: self._chunk]

    def finish(self) -> None:
        """Seal the last chunk (possibly empty); the caller then flushes and closes `out`."""
        if self._finished:
            raise ValueError("sealing writer already finished")
        self._seal(bytes(self._buffer), last=True)
        self._buffer = bytearray()
        self._finished = True

    def _seal(self, plaintext: bytes | memoryview, *, last: bool) -> None:
        if self._index >= _MAX_CHUNKS:
            raise ValueError("object too large for one sealed spool file")
        aad = self._header + (b"\x01" if last else b"\x00")
        self._out.write(self._aead.encrypt(_nonce(self._prefix, self._index), plaintext, aad))
        self._index += 1


class UnsealingReader(io.RawIOBase):
    """The plaintext of a sealed file, readable and seekable, decrypting one chunk at a time.

    Opening authenticates the last chunk, so a truncated file fails at once; every other chunk is
    authenticated when it is first read. A failure calls `on_failure(problem)` once (the spool audits it)
    and raises `SpoolIntegrityError`; no unauthenticated byte is ever returned.
    """

    def __init__(
        self,
        raw: BinaryIO,
        key: SpoolKey,
        *,
        label: str,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._label = label
        self._on_failure = on_failure
        self._reported = False
        raw.seek(0)
        header = raw.read(HEADER_SIZE)
        if not is_sealed(header):
            self._fail("not an encrypted spool file")
        _magic, version, chunk, key_id, salt, self._prefix = _FIELDS.unpack_from(header)
        if version != FORMAT_VERSION:
            self._fail(f"unsupported format version {version}")
        if not MIN_CHUNK_SIZE <= chunk <= MAX_CHUNK_SIZE:
            self._fail(f"chunk size {chunk} out of bounds")
        if key_id != key.key_id:
            self._fail(f"sealed under another key (id {key_id.hex()}, configured key {key.key_id.hex()})")
        self._header, self._chunk = header, chunk
        self._aead = _file_aead(key, salt)
        body = os.fstat(raw.fileno()).st_size - HEADER_SIZE
        stride = chunk + TAG_SIZE
        self._count = max(1, -(-body // stride))
        last_len = body - (self._count - 1) * stride
        if last_len < TAG_SIZE:
            self._fail("truncated (the last chunk is incomplete)")
        self.plaintext_size = (self._count - 1) * chunk + last_len - TAG_SIZE
        self._pos = 0
        self._cached_index = -1
        self._cached = b""
        self._load(self._count - 1)

    def _fail(self, problem: str) -> None:
        if not self._reported and self._on_failure is not None:
            self._reported = True
            self._on_failure(problem)
        raise SpoolIntegrityError(f"spool object {self._label}: {problem}")

    def _load(self, index: int) -> None:
        stride = self._chunk + TAG_SIZE
        last = index == self._count - 1
        self._raw.seek(HEADER_SIZE + index * stride)
        sealed = self._raw.read(stride)
        if not last and len(sealed) != stride:
            self._fail(f"truncated at chunk {index}")
        aad = self._header + (b"\x01" if last else b"\x00")
        try:
            plain = self._aead.decrypt(_nonce(self._prefix, index), sealed, aad)
        except InvalidTag:
            self._fail(f"chunk {index} failed authentication (altered, reordered or truncated)")
        self._cached_index, self._cached = index, plain

    @property
    def name(self) -> str:
        """The spool-relative path (pydicom records a file object's name as the dataset's filename)."""
        return self._label

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.plaintext_size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self.plaintext_size:
            return 0
        index, offset = divmod(self._pos, self._chunk)
        if index != self._cached_index:
            self._load(index)
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._cached) - offset)
        view[:count] = self._cached[offset : offset + count]
        self._pos += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._cached = b""
        super().close()
