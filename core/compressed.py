"""Files compressed as their names say (.gz, .bz2, .xz, .lzma: the suffixes Beam's ReadFromText
detects), read with the standard library's decompressors.

Not Beam's CompressedFile: these raise EOFError for a stream cut short, where a bare zlib stream
just ends, so a truncated file is an error instead of a shorter file.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
from typing import IO, Callable, Iterator, Mapping

from core.errors import DataError

_OPENERS: Mapping[str, tuple[str, Callable[[IO[bytes]], IO[bytes]]]] = {
    ".gz": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    ".bz2": ("bzip2", lambda raw: bz2.BZ2File(raw, "rb")),
    ".xz": ("xz", lambda raw: lzma.LZMAFile(raw, "rb")),
    ".lzma": ("xz", lambda raw: lzma.LZMAFile(raw, "rb")),
}
# The suffixes of the compressed files read here, in the order of the list above.
READABLE_SUFFIXES = tuple(_OPENERS)
_NOT_READ = (".zst", ".zstd", ".deflate")  # Beam names them; Python 3.11 has no reader for them
# What a decompressor raises for a damaged or truncated stream.
DAMAGED = (EOFError, OSError, lzma.LZMAError)


def compression_of(path: str) -> str:
    """The compression the file's name says ("gzip", "bzip2", "xz"), or "" for a plain file;
    DataError for a compression that cannot be read here."""
    return _format(path)[0]


def decompressing(raw: IO[bytes], path: str) -> IO[bytes]:
    """`raw`'s bytes decompressed as `path`'s name says, or `raw` itself for a plain file."""
    _, opener = _format(path)
    return raw if opener is None else opener(raw)


@contextlib.contextmanager
def refusing_damage(path: str) -> Iterator[None]:
    """Reading `path` inside: a compressed stream damaged or cut short becomes a DataError naming
    the file; a plain file's errors pass through unchanged."""
    try:
        yield
    except DAMAGED as err:
        if not compression_of(path):
            raise
        raise DataError(f"{path}: not a whole {compression_of(path)} file ({err}); nothing was read from it") from None


class DigestingReader(io.RawIOBase):
    """`raw`'s bytes as they are read, fed to `digest` on the way: the stored bytes' checksum taken
    while a decompressor reads them, so a compressed file is read once for both."""

    def __init__(self, raw: IO[bytes], digest) -> None:
        super().__init__()
        self._raw, self._digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        read = self._raw.readinto(buffer)
        if read:
            self._digest.update(memoryview(buffer)[:read])
        return read


def _format(path: str) -> tuple[str, Callable[[IO[bytes]], IO[bytes]] | None]:
    lowered = str(path).lower()
    unread = [suffix for suffix in _NOT_READ if lowered.endswith(suffix)]
    if unread:
        raise DataError(f"{path}: a {unread[0]} file, which cannot be read here: decompress it, or compress it "
                        f"with gzip, bzip2 or xz ({', '.join(_OPENERS)})")
    return next((found for suffix, found in _OPENERS.items() if lowered.endswith(suffix)), ("", None))
