import pytest

from stores.base import And, Eq, In, Ne, Or, Range, matches, parse_filter
from stores.errors import InvalidInput

META = {"lang": "zh", "page": 3, "score": 0.5, "draft": False}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"lang": "zh"}, True),
        ({"lang": "en"}, False),
        ({"lang": {"$ne": "en"}}, True),
        ({"missing": {"$ne": "x"}}, True),
        ({"lang": {"$in": ["en", "zh"]}}, True),
        ({"lang": {"$nin": ["en", "zh"]}}, False),
        ({"page": {"$gte": 3, "$lt": 4}}, True),
        ({"page": {"$gt": 3}}, False),
        ({"score": {"$lte": 0.5}}, True),
        ({"lang": {"$gt": 1}}, False),
        ({"draft": False}, True),
        ({"$or": [{"lang": "en"}, {"page": 3}]}, True),
        ({"$and": [{"lang": "zh"}, {"page": {"$lt": 3}}]}, False),
        ({"lang": "zh", "page": 3}, True),
    ],
)
def test_parse_and_match(spec: dict, expected: bool) -> None:
    assert matches(parse_filter(spec), META) is expected


def test_parse_builds_typed_clauses() -> None:
    assert parse_filter({"a": 1}) == Eq("a", 1)
    assert parse_filter({"a": {"$ne": 1}}) == Ne("a", 1)
    assert parse_filter({"a": {"$in": [1, 2]}}) == In("a", (1, 2))
    assert parse_filter({"a": {"$gte": 1}}) == Range("a", gte=1)
    assert parse_filter({"$or": [{"a": 1}, {"b": 2}]}) == Or((Eq("a", 1), Eq("b", 2)))
    assert parse_filter({"a": 1, "b": 2}) == And((Eq("a", 1), Eq("b", 2)))
    assert parse_filter({}) is None
    assert parse_filter(None) is None


@pytest.mark.parametrize(
    "spec",
    [{"$xor": []}, {"a": {"$regex": "x"}}, {"a": {"$in": []}}, {"a": {"$gt": "x"}},
     {"a": [1, 2]}, {"$and": "x"}],
)
def test_bad_filters_are_typed_errors(spec: dict) -> None:
    with pytest.raises(InvalidInput):
        parse_filter(spec)
