"""Loaders: a file's bytes -> text, page offsets and metadata.

Supported: .txt, .md/.markdown, .html/.htm, .pdf (pypdf, page numbers kept), .docx.
Plain-text encodings are detected (UTF-8, UTF-16/32 with BOM, GB18030/GBK, and what
charset-normalizer recognises). Each failure is a typed error naming the file.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stores.errors import InvalidInput, UnsupportedFileType

# pypdf notes the damage it reads past ("EOF marker not found") as warnings, which reached
# the terminal as stray lines with no file named; a PDF it cannot read fails with its reason.
logging.getLogger("pypdf").setLevel(logging.ERROR)

MIME_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}


@dataclass
class LoadedDocument:
    """Extracted text. ``page_starts[i]`` is the character offset where page ``i + 1`` begins."""

    text: str
    mime_type: str
    page_starts: list[int] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding character ``offset``, or None for unpaged formats."""
        if not self.page_starts:
            return None
        page = 0
        for i, start in enumerate(self.page_starts):
            if start <= offset:
                page = i
            else:
                break
        return page + 1


def supported_extensions() -> list[str]:
    return sorted(MIME_TYPES)


def mime_type_for(name: str) -> str:
    ext = Path(name).suffix.lower()
    if ext not in MIME_TYPES:
        raise UnsupportedFileType(
            f"{name}: unsupported file type {ext or '(no extension)'!r}; "
            f"supported: {', '.join(supported_extensions())}"
        )
    return MIME_TYPES[ext]


def load_bytes(name: str, data: bytes) -> LoadedDocument:
    """Extract text from a file's content; ``name`` picks the loader and labels errors.

    Raises:
        UnsupportedFileType: unknown extension, or content that is not what the name says.
        InvalidInput: an empty, unreadable or text-less file.
    """
    mime = mime_type_for(name)
    if not data:
        raise InvalidInput(f"{name}: the file is empty")
    loader = _LOADERS[mime]
    try:
        doc = loader(name, data)
    except (InvalidInput, UnsupportedFileType):
        raise
    except Exception as exc:  # parsers raise many types on corrupt input
        raise InvalidInput(f"{name}: cannot read the file ({type(exc).__name__}: {exc})") from exc
    doc.text = doc.text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in doc.text else doc.text
    if not doc.text.strip():
        hint = " (a scanned PDF without a text layer needs OCR first)" if "pdf" in mime else ""
        raise InvalidInput(f"{name}: no text found in the file{hint}")
    doc.mime_type = mime
    return doc


def load_file(path: Path) -> LoadedDocument:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the file ({exc.strerror})") from exc
    return load_bytes(Path(path).name, data)


# -- text encodings -------------------------------------------------------------------------

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def decode_text(name: str, data: bytes) -> tuple[str, str]:
    """Decode text bytes, returning ``(text, encoding)``."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding), encoding
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        raise InvalidInput(f"{name}: looks like a binary file, not text")
    try:
        text = data.decode("gb18030")
        if _mostly_readable(text):
            return text, "gb18030"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None or best.encoding is None:
        raise InvalidInput(f"{name}: cannot detect the text encoding; save it as UTF-8")
    return str(best), best.encoding


def _mostly_readable(text: str) -> bool:
    """GB18030 decodes almost any bytes; accept it only when the result is CJK or ASCII text."""
    if not text:
        return False
    good = sum(
        1 for ch in text
        if ch.isascii() or "\u3000" <= ch <= "\u9fff" or "\uff00" <= ch <= "\uffef"
    )
    return good / len(text) > 0.9


# -- loaders ----------------------------------------------------------------------------------


def _load_text(name: str, data: bytes) -> LoadedDocument:
    text, encoding = decode_text(name, data)
    if "\x00" in text:
        raise InvalidInput(f"{name}: looks like a binary file, not text")
    return LoadedDocument(text, "", metadata={"encoding": encoding})


def _load_html(name: str, data: bytes) -> LoadedDocument:
    from bs4 import BeautifulSoup

    text, encoding = decode_text(name, data)
    if "<" not in text:
        raise UnsupportedFileType(f"{name}: not HTML (no markup found)")
    soup = BeautifulSoup(text, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
        tag.decompose()
    title_tag = BeautifulSoup(text, "html.parser").title
    blocks: list[str] = []
    block_tags = ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "td", "th",
                  "blockquote", "dt", "dd", "figcaption", "caption"]
    for el in soup.find_all(block_tags):
        if el.find_parent(block_tags) is not None:
            continue  # nested blocks are covered by their parent's text
        content = re.sub(r"[ \t\r\f\v]+", " ", el.get_text(" ", strip=True)).strip()
        if not content:
            continue
        if el.name and el.name[0] == "h" and el.name[1:].isdigit():
            content = "#" * int(el.name[1:]) + " " + content
        blocks.append(content)
    if not blocks:  # markup without block elements: fall back to all visible text
        blocks = [re.sub(r"\s+", " ", soup.get_text(" ", strip=True))]
    meta: dict[str, Any] = {"encoding": encoding}
    if title_tag is not None and title_tag.string:
        meta["title"] = title_tag.string.strip()
    return LoadedDocument("\n\n".join(blocks), "", metadata=meta)


def _load_pdf(name: str, data: bytes) -> LoadedDocument:
    if not data.lstrip()[:5].startswith(b"%PDF-"):
        raise UnsupportedFileType(f"{name}: not a PDF file (no %PDF header)")
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        try:
            reader.decrypt("")
        except Exception as exc:
            raise InvalidInput(f"{name}: the PDF is encrypted; remove its password first") from exc
    parts: list[str] = []
    starts: list[int] = []
    offset = 0
    for page in reader.pages:
        page_text = (page.extract_text() or "").strip()
        starts.append(offset)
        parts.append(page_text)
        offset += len(page_text) + 2
    meta: dict[str, Any] = {"pages": len(starts)}
    info = reader.metadata
    if info is not None and info.title:
        meta["title"] = str(info.title)
    return LoadedDocument("\n\n".join(parts), "", page_starts=starts, metadata=meta)


def _load_docx(name: str, data: bytes) -> LoadedDocument:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise UnsupportedFileType(f"{name}: not a .docx file (not a zip archive)")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        if "word/document.xml" not in zf.namelist():
            raise UnsupportedFileType(f"{name}: not a .docx file (no word/document.xml)")
    import docx

    document = docx.Document(io.BytesIO(data))
    blocks: list[str] = []
    for para in document.paragraphs:
        content = para.text.strip()
        if not content:
            continue
        style = (para.style.name if para.style is not None else "") or ""
        match = re.match(r"Heading (\d)", style)
        if match:
            content = "#" * int(match.group(1)) + " " + content
        elif style == "Title":
            content = "# " + content
        blocks.append(content)
    for table in document.tables:
        for row in table.rows:
            cells = [c.text.strip() for c in row.cells if c.text.strip()]
            if cells:
                blocks.append(" | ".join(cells))
    meta: dict[str, Any] = {}
    if document.core_properties.title:
        meta["title"] = document.core_properties.title
    return LoadedDocument("\n\n".join(blocks), "", metadata=meta)


_LOADERS: dict[str, Callable[[str, bytes], LoadedDocument]] = {
    "text/plain": _load_text,
    "text/markdown": _load_text,
    "text/html": _load_html,
    "application/pdf": _load_pdf,
    MIME_TYPES[".docx"]: _load_docx,
}
