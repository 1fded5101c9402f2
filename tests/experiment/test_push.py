"""`--push_to_hub`: a trained output folder (adapter, card, metrics, ...) reaches a local fake Hub intact.

The run happens in a subprocess whose environment points HF_ENDPOINT at tests/hub/fake_hub.py's server on
127.0.0.1 before huggingface_hub is imported; the test then inspects what the fake Hub stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from hub.fake_hub import FakeHub  # tests/ is on sys.path (rootdir-relative imports)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ID, TOKEN = "fishertune-test/demo-adapter", "hf_fake_token_for_tests"


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("exp_push"))
    with FakeHub() as hub:
        drop = ("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.upper().endswith("_PROXY")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_XET="1", HF_HOME=os.path.join(work, "hf_home"),
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_ETAG_TIMEOUT="10",
                   NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")  # fmt: skip
        proc = subprocess.run([sys.executable, os.path.join(HERE, "_push_driver.py"), work, REPO_ID, TOKEN],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        path = os.path.join(work, "result.json")
        assert proc.returncode == 0 and os.path.exists(path), proc.stdout[-3000:] + proc.stderr[-3000:]
        with open(path) as f:
            result = json.load(f)
        assert "traceback" not in result, result["traceback"]
        yield hub, result


def _local_files(folder: str) -> dict[str, bytes]:
    files = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                files[os.path.relpath(p, folder).replace(os.sep, "/")] = f.read()
    return files


def test_uploaded_files_are_the_output_folder(pushed):
    """The run's files go to the repo, its base_model/ to "<repo>-base"; adapter_config.json names that repo."""
    hub, result = pushed
    remote, local = hub.files(REPO_ID), _local_files(result["output_dir"])
    base = {k[len("base_model/") :]: v for k, v in local.items() if k.startswith("base_model/")}
    local = {k: v for k, v in local.items() if not k.startswith("base_model/")}
    assert set(remote) == set(local)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "metrics.json", "config.yaml",
            "fishertune_scores.safetensors", "fishertune_sensitivity.png"} <= set(remote)  # fmt: skip
    assert all(remote[name] == data for name, data in local.items() if name != "adapter_config.json")
    assert {"config.json", "model.safetensors"} <= set(base)
    assert all(hub.files(REPO_ID + "-base")[name] == data for name, data in base.items())
    config = json.loads(remote["adapter_config.json"])
    assert config["base_model_name_or_path"] == REPO_ID + "-base"
    assert json.loads(remote["metrics.json"]) == result["metrics"]
    assert config["peft_type"].lower() == "fishertune"
    assert hub.repo(REPO_ID).private is True and len(hub.repo(REPO_ID).commits) == 1
    assert hub.repo(REPO_ID + "-base").private is True
    assert result["push_url"] == f"{hub.endpoint}/{REPO_ID}/commit/{hub.repo(REPO_ID).commits[0]['oid']}"


def test_card_points_at_the_repo_and_no_secret_is_uploaded(pushed):
    hub, _ = pushed
    files = hub.files(REPO_ID)
    card = files["README.md"].decode()
    assert f'model = AutoPeftModel.from_pretrained("{REPO_ID}")' in card
    assert yaml.safe_load(card.split("---")[1])["base_model"] == REPO_ID + "-base"
    assert all(TOKEN.encode() not in data for data in files.values())
    config = yaml.safe_load(files["config.yaml"])
    assert config["push_to_hub"] is True and config["hub_model_id"] == REPO_ID


def test_only_known_endpoints_with_the_token(pushed):
    hub, _ = pushed
    assert hub.unhandled == [] and all(r["status"] < 500 for r in hub.requests)
    assert all(r["token"] == TOKEN for r in hub.requests if not r["path"].startswith("/_lfs/upload/"))
