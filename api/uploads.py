"""Uploaded files: names made safe, size limited while streaming to disk, type checked by
content as well as by extension."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

from fastapi import UploadFile

from ingest.loaders import mime_type_for
from stores.errors import InvalidInput, PayloadTooLarge, UnsupportedFileType

_CHUNK = 1 << 20
_TEXT = {".txt", ".text", ".md", ".markdown", ".html", ".htm"}


def safe_name(raw: str | None) -> str:
    """The file's own name: no directories (``../``, ``C:\\``), no control characters."""
    name = PureWindowsPath(PurePosixPath(raw or "").name).name
    name = "".join(ch for ch in unicodedata.normalize("NFC", name)
                   if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name:
        raise InvalidInput(f"upload has no usable file name: {raw!r}")
    return name[:200]


async def save(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    """Stream one upload into ``folder`` and check it; raises before anything is ingested."""
    name = safe_name(upload.filename)
    mime_type_for(name)  # UnsupportedFileType for an unknown extension
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    size = 0
    head = b""
    with open(target, "wb") as out:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"{name}: larger than the {max_bytes}-byte upload limit")
            if len(head) < 8192:
                head += chunk[: 8192 - len(head)]
            out.write(chunk)
    if size == 0:
        raise InvalidInput(f"{name}: the file is empty")
    check_content(name, head)
    return target


def check_content(name: str, head: bytes) -> None:
    """The bytes must be what the extension says (a renamed binary is refused)."""
    ext = Path(name).suffix.lower()
    if ext == ".pdf" and not head.lstrip()[:5] == b"%PDF-":
        raise UnsupportedFileType(f"{name}: not a PDF file (no %PDF- header)")
    if ext == ".docx" and not head.startswith(b"PK\x03\x04"):
        raise UnsupportedFileType(f"{name}: not a .docx file (not a ZIP container)")
    if ext in _TEXT and b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UnsupportedFileType(f"{name}: binary content in a text file")
