"""The HTTP service: FastAPI over the ``RAG`` engine (``rag serve``)."""

from api.app import create_app

__all__ = ["create_app"]
