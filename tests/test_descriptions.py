"""MLSysOps descriptions: the upstream files load unmodified; bad ones are refused naming every field path."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from mapemesh import descriptions
from mapemesh.events.export import SCHEMAS_DIR

from .conftest import SHARED

UPSTREAM = SHARED / "reference" / "mlsysops"
FILES = {"app-description.user_provided.yaml": descriptions.Application,
         "node-description.node1.yaml": descriptions.NodeDescription,
         "cluster-description.yaml": descriptions.ClusterDescription,
         "continuum-description.yaml": descriptions.ContinuumDescription}


@pytest.mark.parametrize("name", list(FILES))
def test_the_upstream_descriptions_load_unmodified_and_fit_the_exported_schemas(name):
    path = UPSTREAM / name
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared is laid beside the checkout in CI)")
    doc = yaml.safe_load(path.read_text())
    model = descriptions.load(doc)
    assert isinstance(model, FILES[name])
    kind = next(iter(doc))
    schema = json.loads((SCHEMAS_DIR / f"description.{kind}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(doc, schema)


def test_every_problem_is_named_by_its_path():
    bad = {"MLSysOpsApp": {"name": "shop", "components": [
        {"metadata": {"name": "web"}, "containers": [{"image": "nginx", "ports": [{"container_port": 0}]}]},
        {"metadata": {}, "containers": [{"env": [{"value": "x"}]}], "qos_metrics": [
            {"application_metric_id": "m", "target": "high"}]}]}}
    with pytest.raises(descriptions.DescriptionError) as caught:
        descriptions.load(bad)
    problems = caught.value.problems
    assert any(p.startswith("MLSysOpsApp.components[0].containers[0].ports[0].container_port:") for p in problems)
    assert any(p.startswith("MLSysOpsApp.components[1].metadata.name:") for p in problems)
    assert any(p.startswith("MLSysOpsApp.components[1].containers[0].image:") for p in problems)
    assert any(p.startswith("MLSysOpsApp.components[1].containers[0].env[0].name:") for p in problems)
    assert any(p.startswith("MLSysOpsApp.components[1].qos_metrics[0].target:") for p in problems)


def test_unknown_fields_and_shapes_are_refused_where_mapemesh_acts_on_them():
    with pytest.raises(descriptions.DescriptionError, match=r"components\[0\]\.contaners: Extra inputs"):
        descriptions.load({"MLSysOpsApp": {"name": "x", "components": [
            {"metadata": {"name": "a"}, "containers": [{"image": "i"}], "contaners": []}]}})
    with pytest.raises(descriptions.DescriptionError, match="no MLSysOpsApp"):
        descriptions.load({"Something": {}})
    with pytest.raises(descriptions.DescriptionError, match="a mapping"):
        descriptions.load(["not", "a", "description"])
    # Parts the upstream format leaves open are kept as given.
    node = descriptions.load({"MLSysOpsNode": {"name": "n", "hardware": {"fpga": {"model": "x"}},
                                               "power": {"anything": 1}}})
    assert node.MLSysOpsNode.hardware.model_extra == {"fpga": {"model": "x"}}
