"""Durable state for the FAISS store: a snapshot file plus an append-only write-ahead log.

Every ``upsert``/``delete`` appends one checksummed entry to ``wal.log`` and fsyncs it, so a
write is durable when the call returns and costs O(batch), not O(store). ``snapshot.npz`` is
rewritten atomically (temp file, fsync, rename) when the log grows past the snapshot, then
the log is truncated. A torn entry at the log's tail (a crash mid-append) is dropped on
replay. Replaying is idempotent, so a crash between the rename and the truncate is harmless.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_HEADER = struct.Struct("<4sII")  # kind, payload length, crc32
UPSERT = b"UPSR"
DELETE = b"DELE"
FORMAT_VERSION = 1


@dataclass
class LogEntry:
    kind: bytes
    ids: list[str]
    texts: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray | None


def encode_upsert(
    ids: list[str], texts: list[str], metadata: list[dict[str, Any]], vectors: np.ndarray
) -> bytes:
    head = json.dumps(
        {"ids": ids, "texts": texts, "metadata": metadata, "dim": int(vectors.shape[1])},
        ensure_ascii=False,
    ).encode()
    body = struct.pack("<I", len(head)) + head + np.ascontiguousarray(vectors, np.float32).tobytes()
    return _frame(UPSERT, body)


def encode_delete(ids: list[str]) -> bytes:
    return _frame(DELETE, json.dumps(ids, ensure_ascii=False).encode())


def _frame(kind: bytes, body: bytes) -> bytes:
    return _HEADER.pack(kind, len(body), zlib.crc32(body)) + body


def append(path: Path, entry: bytes) -> int:
    """Append one framed entry, fsync, and return the new log size."""
    with open(path, "ab") as fh:
        fh.write(entry)
        fh.flush()
        os.fsync(fh.fileno())
        return fh.tell()


def read_entries(path: Path, offset: int) -> tuple[list[LogEntry], int]:
    """Entries from ``offset`` to the last complete one, and the offset after it.

    Only the bytes past ``offset`` are read: every store operation calls this, and the log
    may grow as large as the snapshot before it is folded in (a 20,000-chunk store's 7 MB
    log took a query from 0.3 ms to 1.4 ms when it was read whole each time)."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size <= offset:
                return [], offset  # the usual case: nothing new
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], 0
    entries: list[LogEntry] = []
    pos = offset
    for entry, end in _iter_frames(data, 0):
        entries.append(entry)
        pos = offset + end
    return entries, pos


def _iter_frames(data: bytes, pos: int) -> Iterator[tuple[LogEntry, int]]:
    while pos + _HEADER.size <= len(data):
        kind, length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            return  # torn tail from a crash mid-append: ignore it
        body = data[start:end]
        if kind == UPSERT:
            (hlen,) = struct.unpack_from("<I", body, 0)
            head = json.loads(body[4 : 4 + hlen])
            vecs = np.frombuffer(body[4 + hlen :], dtype=np.float32).reshape(-1, head["dim"])
            yield LogEntry(kind, head["ids"], head["texts"], head["metadata"], vecs), end
        elif kind == DELETE:
            yield LogEntry(kind, json.loads(body), [], [], None), end
        else:
            return
        pos = end


def truncate(path: Path, size: int) -> None:
    """Cut a torn tail so later appends start on a frame boundary."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as fh:
            fh.truncate(size)
            os.fsync(fh.fileno())


@dataclass
class Snapshot:
    vectors: np.ndarray  # every row, live or tombstoned; row number == faiss label
    ids: list[str | None]  # None for tombstoned rows
    texts: list[str]
    metadata: list[dict[str, Any]]
    index_bytes: bytes | None
    index_kind: str  # what index_bytes holds: "flat", "hnsw" or "ivf"


def write_snapshot(path: Path, snap: Snapshot) -> None:
    """Write atomically: temp file in the same directory, fsync, rename, fsync the directory."""
    payload = json.dumps(
        {
            "version": FORMAT_VERSION,
            "ids": snap.ids,
            "texts": snap.texts,
            "metadata": snap.metadata,
            "index_kind": snap.index_kind,
        },
        ensure_ascii=False,
    ).encode()
    buf = io.BytesIO()
    np.savez(
        buf,
        vectors=np.ascontiguousarray(snap.vectors, np.float32),
        payload=np.frombuffer(payload, dtype=np.uint8),
        index=np.frombuffer(snap.index_bytes or b"", dtype=np.uint8),
    )
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_snapshot(path: Path) -> Snapshot:
    with np.load(path, allow_pickle=False) as npz:
        payload = json.loads(npz["payload"].tobytes())
        index = npz["index"].tobytes()
        vectors = np.array(npz["vectors"], dtype=np.float32)
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported snapshot format {payload.get('version')!r}")
    return Snapshot(
        vectors=vectors,
        ids=payload["ids"],
        texts=payload["texts"],
        metadata=payload["metadata"],
        index_bytes=index or None,
        index_kind=payload["index_kind"],
    )
