"""rag-platform: retrieval-augmented generation with cited answers.

The public Python API::

    from rag import RAG
    rag = RAG.from_settings()
    rag.ingest(["docs/"], kb="handbook")
    answer = rag.ask("How do I reset my password?", kb="handbook")
    print(answer.text, answer.citations)
"""

from rag.client import AsyncClient, Client
from rag.engine import RAG, AnswerDelta
from rag.errors import RagError
from rag.settings import Settings
from rag.types import Answer, Citation, Passage, SearchResult, Timings

__all__ = [
    "RAG",
    "Answer",
    "AnswerDelta",
    "AsyncClient",
    "Citation",
    "Client",
    "Passage",
    "RagError",
    "SearchResult",
    "Settings",
    "Timings",
]
