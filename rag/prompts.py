"""Prompts: numbered passages, answer language, and the context budget."""

from __future__ import annotations

from collections.abc import Callable

from rag.generation.base import Message
from rag.types import Passage
from stores.tokens import has_cjk

# Short on purpose: small models (the packaged 135M default) follow it; longer ones derail them.
SYSTEM_EN = (
    "Answer the question using only the numbered passages. Cite the passage you used like [1]. "
    "If the passages do not answer it, say you don't know."
)
SYSTEM_ZH = (
    "你只根据给出的编号段落回答问题。每句话后用 [1]、[2] 等标注所依据的段落。"
    "如果段落中没有答案，就说不知道。用提问所用的语言回答。"
)
NO_ANSWER_EN = "I could not find anything about this in the knowledge base."
NO_ANSWER_ZH = "知识库中没有找到与这个问题相关的内容。"


def no_answer_text(question: str) -> str:
    return NO_ANSWER_ZH if has_cjk(question) else NO_ANSWER_EN


def format_passage(n: int, p: Passage) -> str:
    where = p.document_name + (f", p. {p.page}" if p.page is not None else "")
    return f"[{n}] ({where}) {p.text.strip()}"


def build_messages(
    question: str, passages: list[Passage], history: list[Message] | None = None
) -> list[Message]:
    zh = has_cjk(question)
    context = "\n\n".join(format_passage(i + 1, p) for i, p in enumerate(passages))
    label_passages, label_question = ("段落", "问题") if zh else ("Passages", "Question")
    user = f"{label_passages}:\n{context}\n\n{label_question}: {question}"
    return [
        Message("system", SYSTEM_ZH if zh else SYSTEM_EN),
        *(history or []),
        Message("user", user),
    ]


def fit_passages(
    question: str,
    passages: list[Passage],
    count_tokens: Callable[[list[Message]], int],
    budget: int,
    history: list[Message] | None = None,
) -> list[Passage]:
    """Drop the lowest-ranked passages until the prompt fits ``budget`` tokens."""
    kept = list(passages)
    while kept and count_tokens(build_messages(question, kept, history)) > budget:
        kept.pop()
    return kept
