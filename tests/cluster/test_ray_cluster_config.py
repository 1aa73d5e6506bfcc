"""ray_cluster.yaml passes Ray's own launcher validation, turns token authentication on for every
node and keeps its ports off the internet."""
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def raw_config() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def rendered_config() -> dict:
    """The config as the launcher uses it: Ray's defaults filled in, validated."""
    config = prepare_config(raw_config())
    validate_config(config)
    return config


def test_ray_cluster_yaml_is_valid():
    raw = raw_config()
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head  # dashboard and job API reachable only via a tunnel
    nodes = rendered_config()["available_node_types"]
    assert nodes[raw["head_node_type"]]["resources"].get("CPU") == 0
    for node in nodes.values():  # S3 through the instance role, never keys
        assert "IamInstanceProfile" in node["node_config"]
    assert "AWS_SECRET_ACCESS_KEY" not in (ROOT / "ray_cluster.yaml").read_text()


def test_token_auth_is_on_for_every_node():
    config = rendered_config()
    head, workers = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    (start_head,) = [c for c in head if "ray start" in c]
    generate = [i for i, c in enumerate(head) if "ray get-auth-token --generate" in c]
    assert generate and generate[0] < head.index(start_head), "the token is made on the head before Ray starts"
    assert "> /dev/null" in head[generate[0]], "the token is not printed into the launcher's output"
    for command in (start_head, *[c for c in workers if "ray start" in c]):
        assert command.startswith("RAY_AUTH_MODE=token "), command
    # Workers get the head's token file before their `ray start` (the launcher syncs it first).
    assert "~/.ray/auth_token" in config["cluster_synced_files"]
    text = (ROOT / "ray_cluster.yaml").read_text()
    assert not re.search(r"RAY_AUTH_TOKEN=\S", text), "no token value in the repository"


def test_the_head_command_makes_a_private_token_without_printing_it(tmp_path):
    (command,) = [c for c in raw_config()["head_start_ray_commands"] if "get-auth-token" in c]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(HOME=str(tmp_path), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    p = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    token_file = tmp_path / ".ray" / "auth_token"
    token = token_file.read_text().strip()
    assert len(token) >= 32 and token not in p.stdout + p.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    subprocess.run(["bash", "-c", command], env=env, check=True, capture_output=True, timeout=120)
    assert token_file.read_text().strip() == token, "a restart keeps the cluster's token"


def test_nothing_is_open_to_the_internet(monkeypatch):
    config = rendered_config()
    rendered = json.dumps(config)
    assert "0.0.0.0/0" not in rendered and "::/0" not in rendered
    # A group the launcher creates always gets SSH from 0.0.0.0/0, whatever IpPermissions say ...
    from ray.autoscaler._private.aws import config as aws

    default_rules = json.dumps(aws._create_default_inbound_rules(["sg-0"], []))
    assert "0.0.0.0/0" in default_rules
    assert "security_group" not in config["provider"], "Ray would create a group open to SSH from anywhere"
    # ... so every node names the user's own group, which the user must fill in.
    for node in config["available_node_types"].values():
        (group,) = node["node_config"]["SecurityGroupIds"]
        assert not re.fullmatch(r"sg-[0-9a-f]{8}(?:[0-9a-f]{9})?", group), "a placeholder, not someone's group"
    # With every group named, the launcher neither creates a group nor adds rules (no AWS call).
    monkeypatch.setattr(aws, "_resource", lambda *a, **k: pytest.fail("the launcher would call AWS"))
    assert aws._configure_security_group(config) == config


def test_the_iam_comment_and_readme_name_every_s3_action_the_code_uses():
    text = (ROOT / "ray_cluster.yaml").read_text()
    readme = (ROOT / "README.md").read_text()
    for action in ("s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert action in text and action in readme, action
