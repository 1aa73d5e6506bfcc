"""ray_cluster.yaml passes Ray's own launcher validation and keeps its ports off the internet."""
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]


def test_ray_cluster_yaml_is_valid():
    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # dashboard and job API reachable only via a tunnel
    nodes = raw["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"].get("CPU") == 0
    for node in nodes.values():  # S3 through the instance role, never keys
        assert "IamInstanceProfile" in node["node_config"]
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "ray_cluster.yaml").read_text()
    inbound = raw["provider"]["security_group"]["IpPermissions"]
    assert [(rule["FromPort"], rule["ToPort"]) for rule in inbound] == [(22, 22)], "SSH only from outside"
