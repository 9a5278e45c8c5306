import itertools

from ingest.chunking import Chunker
from ingest.config import ChunkingConfig
from ingest.loaders import LoadedDocument
from tests.helpers import HashEmbedder

count = HashEmbedder().count_tokens


def split(text: str, size: int = 40, overlap: int = 5, pages: list[int] | None = None):
    doc = LoadedDocument(text, "text/markdown", page_starts=pages or [])
    return doc, Chunker(ChunkingConfig(chunk_size=size, chunk_overlap=overlap), count).split(doc)


def test_spans_are_exact_and_sizes_bounded() -> None:
    text = "# Title\n\n" + " ".join(f"Sentence {i} is here." for i in range(80))
    doc, chunks = split(text)
    assert len(chunks) > 5
    for c in chunks:
        assert doc.text[c.start : c.end] == c.text
        assert c.token_count <= 40 + 8  # a joined lone heading may add a few tokens
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))


def test_chinese_splits_at_sentence_punctuation() -> None:
    text = "".join(f"第{i}句讲的是检索增强生成的一个要点。" for i in range(30))
    doc, chunks = split(text, size=30, overlap=0)
    assert len(chunks) > 3
    for c in chunks[:-1]:
        assert c.text.endswith("。"), c.text
        assert doc.text[c.start : c.end] == c.text


def test_headings_start_chunks_and_are_not_alone() -> None:
    text = "# A\n\n" + "alpha words here. " * 30 + "\n\n## B\n\n" + "beta words here. " * 30
    _, chunks = split(text)
    assert any(c.text.startswith("## B\n\nbeta") for c in chunks)
    assert all(c.text.strip() not in ("# A", "## B") for c in chunks)


def test_pages_follow_the_span() -> None:
    page1 = "first page text. " * 20
    page2 = "second page text. " * 20
    text = page1 + "\n\n" + page2
    _, chunks = split(text, pages=[0, len(page1) + 2])
    assert chunks[0].page == 1
    assert chunks[-1].page == 2


def test_a_document_that_fits_is_one_chunk_and_each_piece_is_counted_once() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return count(text)

    chunker = Chunker(ChunkingConfig(chunk_size=40, chunk_overlap=5), counting)
    short = LoadedDocument("\n  A short note. It fits in one chunk.  \n", "text/plain",
                           page_starts=[])
    chunks = chunker.split(short)
    assert [c.text for c in chunks] == ["A short note. It fits in one chunk."]
    assert short.text[chunks[0].start : chunks[0].end] == chunks[0].text
    assert len(calls) == 1  # measured whole, not sentence by sentence

    calls.clear()
    long = LoadedDocument(" ".join(f"Sentence {i} is here." for i in range(80)), "text/plain",
                          page_starts=[])
    chunks = chunker.split(long)
    assert len(chunks) > 5
    assert len(calls) == len(set(calls))  # the splitter's repeated measures are remembered
    for c in chunks:
        assert long.text[c.start : c.end] == c.text
        assert c.token_count == count(c.text) <= 40


def test_later_chunks_carry_the_document_title() -> None:
    from ingest.chunking import document_title

    body = " ".join(f"Sentence {i} is here." for i in range(80))
    doc, chunks = split("Harbour tides\n\n" + body)
    assert document_title(doc) == "Harbour tides"
    assert chunks[0].title == "" and chunks[0].text.startswith("Harbour tides")
    assert all(c.title == "Harbour tides" for c in chunks[1:])
    assert chunks[1].indexed_text == "Harbour tides\n\n" + chunks[1].text
    assert chunks[0].indexed_text == chunks[0].text
    for c in chunks:  # the stored text and span are the chunk's own
        assert doc.text[c.start : c.end] == c.text

    assert document_title(LoadedDocument("## Tides\nbody", "text/markdown")) == "Tides"
    assert document_title(LoadedDocument(body, "text/plain")) == ""  # no lone first line
    html = LoadedDocument(body, "text/html", metadata={"title": "  Tide\ntables "})
    assert document_title(html) == "Tide tables"
    no_titles = Chunker(ChunkingConfig(chunk_size=40, chunk_overlap=5, title_context=False),
                        count).split(doc)
    assert [c.title for c in no_titles] == [""] * len(no_titles)


def test_a_title_line_joins_the_start_of_its_long_paragraph() -> None:
    body = " ".join(f"Sentence {i} is here." for i in range(80))
    doc, chunks = split("Harbour tides\n\n" + body)
    assert chunks[0].text.startswith("Harbour tides\n\nSentence 0 is here.")
    zh = "".join(f"第{i}句讲的是检索增强生成的一个要点。" for i in range(30))
    zdoc, zchunks = split("锣鼓经\n\n" + zh, size=30, overlap=0)
    assert zchunks[0].text.startswith("锣鼓经\n\n第0句")
    # A paragraph that fits alone but not after the title is cut at its sentences.
    para = " ".join(f"Point {i} holds." for i in range(12))
    pdoc, pchunks = split("Harbour tides\n\n" + para + "\n\n" + para, size=40, overlap=0)
    assert pchunks[0].text.startswith("Harbour tides\n\nPoint 0 holds.")
    for d, cs in ((doc, chunks), (zdoc, zchunks), (pdoc, pchunks)):
        for c in cs:
            assert d.text[c.start : c.end] == c.text
            assert c.token_count <= (40 if d is not zdoc else 30)
        assert all(c.token_count > 5 for c in cs[:-1]), [c.text for c in cs]


def test_overlap_spans_the_pieces_of_every_level() -> None:
    text = "Intro line.\n\n" + " ".join(f"Sentence {i} is here." for i in range(40))
    _, chunks = split(text, size=40, overlap=10)
    assert len(chunks) > 2
    splitter = Chunker(ChunkingConfig(chunk_size=40, chunk_overlap=10), count)._splitter
    assert splitter.split_text(text) == [c.text for c in chunks]  # as a LangChain splitter
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end, "neighbouring chunks share text"


def test_counting_from_token_offsets_gives_the_same_chunks_without_a_call_per_piece() -> None:
    from tests.helpers import _TOKEN

    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return count(text)

    def offsets(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    texts = [
        "# A\n\n" + "alpha words here. " * 30 + "\n\n## B\n\n" + "beta words here. " * 30,
        "Harbour tides\n\n" + " ".join(f"Sentence {i} is here." for i in range(80)),
        "锣鼓经\n\n" + "".join(f"第{i}句讲的是检索增强生成的要点，也讲别的。" for i in range(40)),
        "检索增强生成" * 40,  # no separator but characters
    ]
    config = ChunkingConfig(chunk_size=40, chunk_overlap=8)
    for text in texts:
        doc = LoadedDocument(text, "text/markdown")
        by_piece = Chunker(config, count).split(doc)
        calls.clear()
        by_offsets = Chunker(config, counting, offsets).split(doc)
        assert by_offsets == by_piece and len(by_piece) > 2
        assert calls == []  # the document was tokenized once, by ``offsets``
    # A tokenizer that cannot give offsets: counted piece by piece.
    doc = LoadedDocument(texts[1], "text/plain")
    assert Chunker(config, counting, lambda _: None).split(doc) == Chunker(config, count).split(doc)
    assert calls
