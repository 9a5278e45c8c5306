"""The VectorStore contract, run against every backend (see conftest.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stores import VectorStore, open_store
from stores.base import And, Eq, Filter, In, Ne, Or, Range, Record, matches
from stores.errors import DimensionMismatch, InvalidInput, StoreUnavailable
from tests.contract.conftest import DIM, StoreCase
from tests.servers import blackhole, free_port

RNG = np.random.default_rng(7)
LANGS = ["en", "zh", None]


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _dataset(n: int = 24) -> list[Record]:
    out = []
    for i in range(n):
        meta: dict[str, object] = {"document_id": f"doc{i % 4}", "ordinal": i,
                                   "score": i / 4, "draft": i % 3 == 0}
        if LANGS[i % 3] is not None:
            meta["lang"] = LANGS[i % 3]
        out.append(Record(f"r{i:02d}", _vec(i), f"文本 {i} text", meta))
    return out


def _ids(hits: list) -> list[str]:  # type: ignore[type-arg]
    return [h.id for h in hits]


def test_fixture_starts_empty(store: VectorStore) -> None:
    assert store.count() == 0
    assert store.get(["r00"]) == []
    assert store.query(_vec(0), 5) == []


def test_upsert_then_query_returns_the_record_first(store: VectorStore) -> None:
    data = _dataset()
    store.upsert(data)
    assert store.count() == len(data)
    assert store.dim == DIM
    for rec in data[:6]:
        hits = store.query(rec.vector, 5)
        assert hits[0].id == rec.id
        assert hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert hits[0].text == rec.text
        assert hits[0].metadata == rec.metadata
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True), "higher is better, best first"
        assert all(-1.001 <= s <= 1.001 for s in scores)


def test_scores_are_cosine_similarities(store: VectorStore) -> None:
    a = np.array([1.0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    b = np.array([1.0, 1.0, 0, 0, 0, 0, 0, 0], dtype=np.float32) * 5  # not normalized
    store.upsert([Record("a", a, "a"), Record("b", b, "b")])
    hits = {h.id: h.score for h in store.query(a * 3, 2)}
    assert hits["a"] == pytest.approx(1.0, abs=1e-3)
    assert hits["b"] == pytest.approx(1 / np.sqrt(2), abs=1e-3)


def test_upsert_of_an_existing_id_replaces_it(store: VectorStore) -> None:
    data = _dataset(8)
    store.upsert(data)
    new = Record("r03", _vec(100), "replaced", {"lang": "zh", "ordinal": 99})
    store.upsert([new])
    assert store.count() == 8
    (got,) = store.get(["r03"])
    assert got.text == "replaced"
    assert got.metadata == {"lang": "zh", "ordinal": 99}
    assert np.allclose(got.vector, new.vector, atol=1e-4)
    assert store.query(_vec(100), 1)[0].id == "r03"
    assert store.count(Eq("ordinal", 3)) == 0


def test_a_repeated_id_in_one_batch_keeps_the_last(store: VectorStore) -> None:
    store.upsert([Record("x", _vec(1), "first"), Record("x", _vec(2), "second")])
    assert store.count() == 1
    assert store.get(["x"])[0].text == "second"


def test_delete_by_ids(store: VectorStore) -> None:
    store.upsert(_dataset(10))
    assert store.delete(ids=["r01", "r02", "missing"]) == 2
    assert store.count() == 8
    assert store.get(["r01", "r02"]) == []
    assert "r01" not in _ids(store.query(_vec(1), 10))
    assert store.delete(ids=["r01"]) == 0


def test_delete_by_filter(store: VectorStore) -> None:
    data = _dataset(12)
    store.upsert(data)
    flt = Eq("document_id", "doc1")
    expected = {r.id for r in data if matches(flt, r.metadata)}
    assert store.delete(filter=flt) == len(expected)
    assert store.count() == 12 - len(expected)
    assert store.count(flt) == 0
    assert not expected & set(_ids(store.query(_vec(1), 12)))


def test_delete_needs_ids_or_filter(store: VectorStore) -> None:
    with pytest.raises(InvalidInput):
        store.delete()


def test_count_with_and_without_filter(store: VectorStore) -> None:
    data = _dataset()
    store.upsert(data)
    assert store.count() == len(data)
    assert store.count(Eq("lang", "zh")) == sum(r.metadata.get("lang") == "zh" for r in data)


FILTERS: list[tuple[str, Filter]] = [
    ("eq-str", Eq("lang", "zh")),
    ("eq-int", Eq("ordinal", 5)),
    ("eq-bool", Eq("draft", True)),
    ("ne", Ne("lang", "en")),  # true where the key is missing, too
    ("in", In("document_id", ("doc0", "doc2"))),
    ("range", Range("score", gte=1.0, lt=3.5)),
    ("range-open", Range("ordinal", gt=20)),
    ("and", And((Eq("lang", "en"), Range("ordinal", lte=10)))),
    ("or", Or((Eq("lang", "zh"), Eq("document_id", "doc3")))),
    ("nested", Or((And((Ne("lang", "zh"), Eq("draft", True))), In("ordinal", (1, 2))))),
]


@pytest.mark.parametrize("name,flt", FILTERS, ids=[f[0] for f in FILTERS])
def test_every_filter_operator(store: VectorStore, name: str, flt: Filter) -> None:
    data = _dataset()
    store.upsert(data)
    expected = {r.id for r in data if matches(flt, r.metadata)}
    assert expected, f"{name}: the dataset must exercise the filter"
    assert store.count(flt) == len(expected), name
    got = _ids(store.query(_vec(3), len(data), flt))
    assert set(got) == expected, name


def test_query_with_a_filter_ranks_within_the_matches(store: VectorStore) -> None:
    data = _dataset()
    store.upsert(data)
    target = data[7]  # lang en
    hits = store.query(target.vector, 3, Eq("lang", target.metadata["lang"]))
    assert hits[0].id == target.id
    assert all(h.metadata.get("lang") == target.metadata["lang"] for h in hits)


def test_get_by_ids(store: VectorStore) -> None:
    data = _dataset(6)
    store.upsert(data)
    got = store.get(["r04", "nope", "r01"])
    assert [r.id for r in got] == ["r04", "r01"]
    assert got[0].text == data[4].text
    assert got[0].metadata == data[4].metadata
    assert np.allclose(got[0].vector, data[4].vector, atol=1e-4)


def test_k_larger_than_the_store_and_bad_k(store: VectorStore) -> None:
    store.upsert(_dataset(3))
    assert len(store.query(_vec(0), 50)) == 3
    with pytest.raises(InvalidInput):
        store.query(_vec(0), 0)


def test_unicode_text_and_metadata_round_trip(store: VectorStore) -> None:
    rec = Record("zh-1", _vec(5), "西湖龙井产于杭州。\n\"引号\" and 'quotes' \\ back",
                 {"document_name": "绿茶与红茶.md", "title": "茶 \"tea\""})
    store.upsert([rec])
    (got,) = store.get(["zh-1"])
    assert got.text == rec.text and got.metadata == rec.metadata
    assert store.count(Eq("document_name", "绿茶与红茶.md")) == 1
    assert store.count(Eq("title", "茶 \"tea\"")) == 1


def test_persistence_across_reopen(case: StoreCase, store: VectorStore) -> None:
    data = _dataset(10)
    store.upsert(data)
    store.delete(ids=["r00"])
    store.close()
    reopened = case.open()
    assert reopened.count() == 9
    assert reopened.dim == DIM
    assert reopened.query(data[5].vector, 1)[0].id == "r05"
    assert reopened.get(["r00"]) == []


def test_wrong_vector_dimension_is_a_typed_error(store: VectorStore) -> None:
    store.upsert(_dataset(4))
    bad = np.ones(DIM + 3, dtype=np.float32)
    with pytest.raises(DimensionMismatch, match="dimension"):
        store.upsert([Record("bad", bad, "x")])
    with pytest.raises(DimensionMismatch):
        store.query(bad, 3)
    assert store.count() == 4, "a rejected upsert writes nothing"


def test_drop_empties_the_store(store: VectorStore) -> None:
    store.upsert(_dataset(5))
    store.drop()
    assert store.count() == 0
    store.upsert(_dataset(2))  # usable again after a drop
    assert store.count() == 2


def _dead_url(case: StoreCase, port: int) -> str:
    if case.backend == "milvus-server":
        return f"milvus://127.0.0.1:{port}?collection=x&timeout=3"
    if case.backend == "chroma-server":
        return f"chroma+http://127.0.0.1:{port}?collection=xyz&timeout=3"
    return f"pinecone://contract?host=http://127.0.0.1:{port}&namespace=x&timeout=3"


@pytest.mark.parametrize("how", ["refused", "hung"])
def test_an_unreachable_server_is_store_unavailable_not_a_hang(case: StoreCase,
                                                               how: str) -> None:
    if not case.server:
        pytest.skip(f"{case.backend} is embedded (in process or a local file): "
                    "there is no server to lose")
    if how == "refused":
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            open_store(_dead_url(case, free_port()))
    else:
        with blackhole() as port:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                open_store(_dead_url(case, port))
    assert time.monotonic() - started < 30, "bounded by the URL's timeout"
