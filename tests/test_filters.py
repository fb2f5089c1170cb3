"""Trigger filters with Knative's semantics: positive and negative cases for every rule."""

from __future__ import annotations

import pytest

from mapemesh.eventing.filters import InvalidFilter, compile_trigger_filter

EVENT = {"specversion": "1.0", "id": "1", "source": "/nodes/node-1", "type": "io.mapemesh.telemetry.reported.v1",
         "subject": "node-1", "node": "node-1", "count": 3}


def passes(filter_=None, filters=None, event=EVENT) -> bool:
    return compile_trigger_filter(filter_, filters).matches(event)


def test_no_filter_passes_everything():
    assert passes()
    assert passes(filters=[])


# -- legacy filter.attributes ----------------------------------------------------------------------

def test_legacy_exact_and_case_sensitive():
    assert passes({"attributes": {"type": "io.mapemesh.telemetry.reported.v1", "source": "/nodes/node-1"}})
    assert not passes({"attributes": {"type": "IO.MAPEMESH.TELEMETRY.REPORTED.V1"}})
    assert not passes({"attributes": {"type": "io.mapemesh.telemetry.reported.v1", "source": "/other"}})


def test_legacy_empty_value_means_present_and_non_empty():
    assert passes({"attributes": {"node": ""}})
    assert not passes({"attributes": {"missing": ""}})
    assert not passes({"attributes": {"subject": ""}}, event={**EVENT, "subject": ""})


def test_legacy_missing_attribute_fails():
    assert not passes({"attributes": {"region": "eu"}})


@pytest.mark.parametrize("key", ["Type", "1type", "my-ext", "my_ext", ""])
def test_legacy_keys_must_be_lowercase_alphanumeric(key):
    with pytest.raises(InvalidFilter, match="must match"):
        compile_trigger_filter({"attributes": {key: "x"}})


# -- filters dialects ------------------------------------------------------------------------------

def test_exact():
    assert passes(filters=[{"exact": {"type": "io.mapemesh.telemetry.reported.v1"}}])
    assert not passes(filters=[{"exact": {"type": "io.mapemesh.telemetry"}}])
    assert not passes(filters=[{"exact": {"region": "eu"}}])  # missing attribute fails
    assert passes(filters=[{"exact": {"count": "3"}}])  # compared as their string form


def test_prefix_and_suffix():
    assert passes(filters=[{"prefix": {"type": "io.mapemesh."}}])
    assert not passes(filters=[{"prefix": {"type": "com.example."}}])
    assert not passes(filters=[{"prefix": {"region": "e"}}])
    assert passes(filters=[{"suffix": {"source": "node-1"}}])
    assert not passes(filters=[{"suffix": {"source": "node-2"}}])
    assert not passes(filters=[{"suffix": {"region": "u"}}])


def test_all_any_not():
    yes, no = {"exact": {"subject": "node-1"}}, {"exact": {"subject": "node-2"}}
    assert passes(filters=[{"all": [yes, {"prefix": {"type": "io."}}]}])
    assert not passes(filters=[{"all": [yes, no]}])
    assert passes(filters=[{"any": [no, yes]}])
    assert not passes(filters=[{"any": [no, {"exact": {"region": "eu"}}]}])
    assert passes(filters=[{"not": no}])
    assert not passes(filters=[{"not": yes}])
    assert passes(filters=[{"not": {"exact": {"region": "eu"}}}])  # missing fails, so not passes


def test_empty_all_and_any_have_no_opinion():
    assert passes(filters=[{"all": []}])
    assert passes(filters=[{"any": []}])
    assert passes(filters=[{"not": {"any": []}}])


def test_list_is_anded():
    assert passes(filters=[{"prefix": {"type": "io."}}, {"exact": {"node": "node-1"}}])
    assert not passes(filters=[{"prefix": {"type": "io."}}, {"exact": {"node": "node-2"}}])


def test_cesql():
    assert passes(filters=[{"cesql": "type LIKE 'io.mapemesh.%' AND subject = 'node-1'"}])
    assert not passes(filters=[{"cesql": "subject = 'node-2'"}])
    assert not passes(filters=[{"cesql": "region = 'eu'"}])  # missing attribute: an error, not delivered
    assert not passes(filters=[{"cesql": "INT(subject) > 1"}])  # cast error: not delivered
    assert passes(filters=[{"cesql": "EXISTS node AND NOT EXISTS region"}])


def test_filters_override_filter():
    assert passes({"attributes": {"type": "nope"}}, [{"exact": {"subject": "node-1"}}])
    assert not passes({"attributes": {"subject": "node-1"}}, [{"exact": {"subject": "node-2"}}])


def test_an_element_with_no_dialect_filters_nothing_out_as_in_knative():
    # Knative's webhook admits `{}` (it checks for more than one dialect, not for none) and it matches every event.
    assert passes(filters=[{}]) and passes(filters=[{}, {"exact": {"subject": "node-1"}}])
    assert not passes(filters=[{}, {"exact": {"subject": "node-2"}}])


@pytest.mark.parametrize(("filters", "message"), [
    # knative/eventing trigger_validation.go ValidateOneOf: at most one dialect per element.
    ([{"exact": {"type": "a"}, "prefix": {"type": "b"}}], "multiple dialects found, filters can have only one"),
    ([{"regex": {"type": "a.*"}}], "unknown dialect"),
    ([{"exact": {"type": ""}}], "can't be empty"),
    ([{"prefix": {}}], "non-empty map"),
    ([{"all": {"exact": {"type": "a"}}}], "list"),
    ([{"not": [{"exact": {"type": "a"}}]}], "one dialect"),
    ([{"cesql": "type = "}], "cesql"),
    ([{"cesql": ""}], "non-empty"),
    ({"exact": {"type": "a"}}, "list"),
])
def test_invalid_filters_are_rejected_with_the_place(filters, message):
    with pytest.raises(InvalidFilter, match=message):
        compile_trigger_filter(None, filters)


def test_exact_type_is_extracted_for_indexing():
    assert compile_trigger_filter({"attributes": {"type": "a"}}).exact_type == "a"
    assert compile_trigger_filter(None, [{"prefix": {"source": "/"}}, {"exact": {"type": "b"}}]).exact_type == "b"
    assert compile_trigger_filter(None, [{"any": [{"exact": {"type": "b"}}]}]).exact_type == "b"
    assert compile_trigger_filter(None, [{"any": [{"exact": {"type": "b"}}, {"prefix": {"type": "c"}}]}]).types is None
    nested = compile_trigger_filter(None, [{"all": [{"exact": {"policy": "p"}}, {"any": [
        {"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}]}])
    assert nested.types == {"a", "b"} and nested.exact_type is None
    assert compile_trigger_filter(None, [{"exact": {"type": "a"}}, {"any": [{"exact": {"type": "a"}},
                                                                           {"exact": {"type": "b"}}]}]).types == {"a"}
    assert compile_trigger_filter(None, [{"not": {"exact": {"type": "a"}}}]).types is None
    assert compile_trigger_filter({"attributes": {"type": ""}}).exact_type is None


def test_empty_filters_list_does_not_override_filter():
    assert not passes({"attributes": {"type": "other"}}, [])
    assert passes({"attributes": {"subject": "node-1"}}, [])


def test_an_attribute_map_holds_one_attribute_as_knative_s_webhook_wants():
    """knative/eventing pkg/apis/eventing/v1/trigger_validation.go, ValidateSingleAttributeMap: `exact`, `prefix`
    and `suffix` take one key-value each; two attributes are two filters (the list is ANDed)."""
    for dialect in ("exact", "prefix", "suffix"):
        with pytest.raises(InvalidFilter, match="only one key-value"):
            compile_trigger_filter(filters=[{dialect: {"type": "io.x", "node": "n1"}}])
