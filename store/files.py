"""Refuse a database file that is not a whole SQLite database before opening it.

SQLite opens a truncated or foreign file without complaint and fails later, on the first page it
cannot read, or (for an empty file) silently starts a new database in its place. Either way the
daemon would start on the wrong data. This check is cheap (one 100-byte read) and runs before
the store touches the file; the file is never changed or replaced.
"""

from __future__ import annotations

import os

from siot.errors import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100


def check_database_file(path: str) -> None:
    """Raise `StoreError` if `path` is on a read-only filesystem, or exists but is not a
    complete SQLite database.

    A missing file, or an empty one with no write-ahead log beside it (a first start killed
    before SQLite wrote anything), is a new database. The size check against the header's page
    count runs only when there is no WAL: with one, an interrupted checkpoint may legitimately
    have written page 1 before the pages after it, and the WAL still holds them.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.statvfs(directory).f_flag & os.ST_RDONLY:
        raise StoreError(
            f"the data directory {directory} is on a read-only filesystem: siot must write its "
            "database there; remount it read-write or choose another --data directory"
        )
    if not os.path.exists(path):
        return
    size = os.path.getsize(path)
    wal = f"{path}-wal"
    wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
    if size == 0:
        if wal_size == 0:
            return
        raise _refuse(path, "is empty but has a write-ahead log beside it (truncated?)")
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        raise _refuse(path, "is not a SQLite database (corrupt, or another kind of file)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    change_counter = header[24:28]
    pages = int.from_bytes(header[28:32], "big")
    header_size_valid = change_counter == header[92:96] and pages > 0
    if wal_size == 0 and header_size_valid and size < pages * page_size:
        raise _refuse(path, f"is truncated: {size} bytes, but its header says {pages} pages of {page_size}")


def _refuse(path: str, why: str) -> StoreError:
    return StoreError(
        f"the database file {path} {why}. siot will not start on it and has not changed it: "
        "restore it from a backup, or move it away to start an empty database"
    )
