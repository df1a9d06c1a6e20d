"""Files compressed as their names say (.gz, .bz2, .xz, .lzma: the suffixes Beam's ReadFromText
detects), read with the standard library's decompressors.

Not Beam's CompressedFile: these raise EOFError for a stream cut short, where a bare zlib stream
just ends, so a truncated file is an error instead of a shorter file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from typing import IO, Callable, Mapping

from core.errors import DataError

_OPENERS: Mapping[str, tuple[str, Callable[[IO[bytes]], IO[bytes]]]] = {
    ".gz": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    ".bz2": ("bzip2", lambda raw: bz2.BZ2File(raw, "rb")),
    ".xz": ("xz", lambda raw: lzma.LZMAFile(raw, "rb")),
    ".lzma": ("xz", lambda raw: lzma.LZMAFile(raw, "rb")),
}
_NOT_READ = (".zst", ".zstd", ".deflate")  # Beam names them; Python 3.11 has no reader for them
# What a decompressor raises for a damaged or truncated stream.
DAMAGED = (EOFError, OSError, lzma.LZMAError)


def compression_of(path: str) -> str:
    """The compression the file's name says ("gzip", "bzip2", "xz"), or "" for a plain file;
    DataError for a compression that cannot be read here."""
    lowered = str(path).lower()
    unread = [suffix for suffix in _NOT_READ if lowered.endswith(suffix)]
    if unread:
        raise DataError(f"{path}: a {unread[0]} file, which cannot be read here: decompress it, or compress it "
                        f"with gzip, bzip2 or xz ({', '.join(_OPENERS)})")
    return next((name for suffix, (name, _) in _OPENERS.items() if lowered.endswith(suffix)), "")


def decompressing(raw: IO[bytes], path: str) -> IO[bytes]:
    """`raw`'s bytes decompressed as `path`'s name says, or `raw` itself for a plain file."""
    lowered = str(path).lower()
    opener = next((make for suffix, (_, make) in _OPENERS.items() if lowered.endswith(suffix)), None)
    return raw if opener is None else opener(raw)


def not_whole(path: str, err: BaseException) -> DataError:
    """The error for a compressed file whose stream is damaged or cut short."""
    return DataError(f"{path}: not a whole {compression_of(path)} file ({err}); nothing was read from it")
