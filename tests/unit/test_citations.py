from rag.citations import attribute, cited_numbers, clean_markers, resolve
from rag.types import Passage

P = [
    Passage("c1", "d1", "a.md", "The Eiffel Tower is in Paris. It was completed in 1889.",
            10, 60, 2, 0.9),
    Passage("c2", "d2", "b.md", "检索增强生成先检索相关段落，再生成答案。", 0, 20, None, 0.8),
]


def test_out_of_range_markers_are_removed() -> None:
    assert clean_markers("Yes [3]. No [1, 2]. Also 【2】.", 2) == "Yes. No [1][2]. Also [2]."
    assert cited_numbers("a [2] b [1][2]") == [2, 1]


def test_uncited_sentences_are_attributed() -> None:
    text = attribute("The tower was completed in 1889.\nRAG 先检索相关段落。 Bananas!", P)
    assert text == "The tower was completed in 1889 [1].\nRAG 先检索相关段落[2]。 Bananas!"


def test_resolve_gives_spans_of_retrieved_passages_only() -> None:
    cites = resolve("Paris [1]. Something [5].", P)
    assert [(c.n, c.chunk_id, c.start, c.end, c.page) for c in cites] == [(1, "c1", 10, 60, 2)]
