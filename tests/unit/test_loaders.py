import io
import logging
from pathlib import Path

import pytest

from ingest.loaders import decode_text, load_bytes, load_file
from stores.errors import InvalidInput, UnsupportedFileType

SAMPLES = Path(__file__).resolve().parents[2] / "rag" / "samples"
ZH = "检索增强生成先检索相关段落，再生成答案。"


@pytest.mark.parametrize("encoding", ["utf-8", "gbk", "gb18030", "utf-16", "utf-8-sig"])
def test_text_encodings(encoding: str) -> None:
    doc = load_bytes("a.txt", (ZH + "\nRAG in English.").encode(encoding))
    assert doc.text.startswith(ZH)
    assert doc.mime_type == "text/plain"


def test_decode_reports_encoding() -> None:
    assert decode_text("a", ZH.encode("gbk"))[1] == "gb18030"
    assert decode_text("a", "héllo".encode())[1] == "utf-8"


def test_html_drops_scripts_and_keeps_headings() -> None:
    doc = load_file(SAMPLES / "returns-policy.html")
    assert "# Returns and refunds" in doc.text
    assert "## Refunds" in doc.text
    assert "console.log" not in doc.text and "font-family" not in doc.text
    assert doc.metadata["title"].startswith("Northwind")


def test_pdf_pages() -> None:
    doc = load_file(SAMPLES / "tea-brewing.pdf")
    assert len(doc.page_starts) == 3
    assert doc.page_at(0) == 1
    storing = doc.text.index("Storing Tea")
    assert doc.page_at(storing) == 2
    assert doc.page_at(doc.text.index("白茶")) == 3


def test_docx_headings_and_tables() -> None:
    import docx

    d = docx.Document()
    d.add_heading("Handbook", level=1)
    d.add_paragraph("Laptops are replaced every three years.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "VPN"
    table.rows[0].cells[1].text = "WireGuard"
    buf = io.BytesIO()
    d.save(buf)
    doc = load_bytes("h.docx", buf.getvalue())
    assert doc.text.startswith("# Handbook")
    assert "three years" in doc.text and "VPN | WireGuard" in doc.text


@pytest.mark.parametrize(
    ("name", "data", "error", "message"),
    [
        ("a.exe", b"MZ", UnsupportedFileType, "unsupported file type '.exe'"),
        ("noext", b"x", UnsupportedFileType, "no extension"),
        ("empty.txt", b"", InvalidInput, "empty"),
        ("blank.md", b"  \n\n ", InvalidInput, "no text"),
        ("bin.txt", b"\x00\x01\x02\xff\xfe\x00" * 10 + b"\xff", InvalidInput, "binary"),
        ("fake.pdf", b"hello, not a pdf", UnsupportedFileType, "not a PDF"),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj <</Type /Catalog", InvalidInput, "broken.pdf"),
        ("fake.docx", b"plain text", UnsupportedFileType, "not a .docx"),
    ],
)
def test_bad_files_raise_typed_errors_naming_the_file(
    name: str, data: bytes, error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        load_bytes(name, data)
    assert message in str(info.value)
    assert name in str(info.value)


def test_a_damaged_pdf_logs_nothing_beside_its_error(caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    """pypdf's notes on the damage ("EOF marker not found") reached the terminal as stray
    warnings (Python prints those when no logging is set up, as in the CLI); the error
    names the file and the reason."""
    caplog.set_level(logging.WARNING)
    with pytest.raises(InvalidInput, match=r"broken\.pdf: cannot read the file"):
        load_bytes("broken.pdf", b"%PDF-1.4\ngarbage")
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("pypdf")]
