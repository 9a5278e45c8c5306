"""Generation backends behind ``rag.generation.base.Generator``, picked by settings."""

from __future__ import annotations

from pathlib import Path

from rag.generation.base import Generator
from rag.settings import GeneratorConfig


def make_generator(config: GeneratorConfig, cache_dir: Path) -> Generator:
    """The configured backend; constructing it is cheap, the model loads on first use."""
    if config.backend == "openai":
        from rag.generation.openai_backend import OpenAIGenerator

        return OpenAIGenerator(config)
    if config.backend == "vllm":
        from rag.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(config, cache_dir)
    from rag.generation.transformers_backend import TransformersGenerator

    return TransformersGenerator(config, cache_dir)
