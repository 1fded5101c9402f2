"""``--push_to_hub``: adapter, model card and metrics reach the Hub, checked against a local fake Hub.

A :class:`FakeHub` (tests/hub/fake_hub.py) listens on 127.0.0.1; the pushes run in one subprocess
(tests/hub/_push_driver.py) whose environment has ``HF_ENDPOINT`` pointing at it and Xet disabled
*before* ``huggingface_hub`` is imported, as a user's would. The tests then inspect what the fake
Hub stored. The parent process never imports torch, so the module stays well under 20 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.numpy import load as load_safetensors_bytes
from safetensors.numpy import load_file

from .fake_hub import FakeHub

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "hf_fake_token_for_tests"  # same as _push_driver.TOKEN
REPO_A, REPO_B, REPO_C = "fishertune-test/run-a", "fishertune-test/run-b", "fishertune-test/run-c"
REPO_D, REPO_E = "fishertune-test/run-d", "fishertune-test/run-e"
BASE_FILES = {"config.json", "model.safetensors", "README.md"}
RUN_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "README.md",
    "metrics.json",
    "config.yaml",
    "fishertune_scores.safetensors",
    "sensitivity_map.png",
}


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """Run every push once against a fresh fake Hub; yield (hub, driver result)."""
    work = str(tmp_path_factory.mktemp("hub_push"))
    with FakeHub() as hub:
        drop = ("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE", "http_proxy", "https_proxy", "all_proxy")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and not k.upper().endswith("_PROXY")}
        env.update(
            HF_ENDPOINT=hub.endpoint,
            HF_HUB_DISABLE_XET="1",
            HF_HOME=os.path.join(work, "hf_home"),  # no stored token, no shared cache
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_ETAG_TIMEOUT="10",
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, "_push_driver.py"), work],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,  # a bound for hangs only; the driver takes ~10 s
        )
        result_path = os.path.join(work, "result.json")
        assert proc.returncode == 0 and os.path.exists(result_path), proc.stdout + proc.stderr
        with open(result_path) as f:
            result = json.load(f)
        assert "traceback" not in result, result.get("traceback")
        yield hub, result
    # FakeHub.__exit__ has shut the server down
    assert hub._server is None


def _assert_same_tensors(remote: bytes, local_path: str) -> None:
    got, want = load_safetensors_bytes(remote), load_file(local_path)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert (got[name] == want[name]).all(), name


def test_all_traffic_goes_to_known_fake_endpoints(pushed):
    hub, result = pushed
    assert result["endpoint"] == hub.endpoint and hub.endpoint.startswith("http://127.0.0.1:")
    assert hub.unhandled == []
    assert all(r["status"] < 500 for r in hub.requests)
    # every Hub API call carries the token; LFS PUTs go to the pre-signed href without it (as on S3)
    for r in hub.requests:
        if not r["path"].startswith("/_lfs/upload/"):
            assert r["token"] == TOKEN, r


def test_push_output_folder_uploads_run_files(pushed):
    hub, result = pushed
    repo = hub.repo(REPO_A)
    assert repo.private is True
    assert repo.create_payload == {
        "name": "run-a",
        "organization": "fishertune-test",
        "visibility": "private",
        "type": "model",
    }
    files = hub.files(REPO_A)
    # exactly the run's files: no checkpoints/ or checkpoint-*/ subfolders
    assert set(files) == RUN_FILES
    run_dir = result["run_dir"]
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "step_10"))
    assert os.path.isdir(os.path.join(run_dir, "checkpoint-20"))
    for name, data in files.items():
        with open(os.path.join(run_dir, name), "rb") as f:
            local = f.read()
        if name == "adapter_config.json":  # the one file that differs: it names the pushed base
            remote_config, local_config = json.loads(data), json.loads(local)
            assert remote_config.pop("base_model_name_or_path") == REPO_A + "-base"
            local_config.pop("base_model_name_or_path")
            assert remote_config == local_config
        else:
            assert data == local, name
    # the base went to its own repo, at its root
    assert set(hub.files(REPO_A + "-base")) == BASE_FILES
    for name in ("config.json", "model.safetensors"):
        with open(os.path.join(run_dir, "base_model", name), "rb") as f:
            assert hub.files(REPO_A + "-base")[name] == f.read(), name
    _assert_same_tensors(files["adapter_model.safetensors"], os.path.join(run_dir, "adapter_model.safetensors"))
    _assert_same_tensors(files["fishertune_scores.safetensors"], os.path.join(run_dir, "fishertune_scores.safetensors"))
    assert json.loads(files["metrics.json"]) == {"cityscapes": {"mIoU": 42.0, "aAcc": 90.0}}
    assert json.loads(files["adapter_config.json"])["peft_type"].lower() == "fishertune"
    assert files["README.md"].startswith(b"---\nlibrary_name: peft")
    # binaries went through the LFS batch API + PUT, text inline in the ndjson commit
    assert repo.lfs_paths == {"adapter_model.safetensors", "fishertune_scores.safetensors", "sensitivity_map.png"}
    # one commit, and the URL returned is that commit's
    assert len(repo.commits) == 1
    assert repo.commits[0]["summary"] == "Upload FisherTune adapter"
    assert result["url_a"] == f"{hub.endpoint}/{REPO_A}/commit/{repo.commits[0]['oid']}"
    assert any("FisherTune adapter" in y for y in hub.validated_yaml)


def test_push_output_folder_again_is_a_noop(pushed):
    hub, result = pushed
    # create_repo answered 409 (exists) and was tolerated; nothing changed => no second commit
    creates = hub.calls("POST", r"^/api/repos/create$")
    assert [r["status"] for r in creates][:4] == [200, 200, 409, 409]  # run-a, run-a-base, then both again
    assert len(hub.repo(REPO_A).commits) == 1
    assert result["url_a_again"] == result["url_a"]


def test_push_output_folder_allow_patterns(pushed):
    hub, result = pushed
    repo = hub.repo(REPO_C)
    assert repo.private is False and repo.create_payload["visibility"] == "public"
    assert set(hub.files(REPO_C)) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert hub.files(REPO_C)["adapter_model.safetensors"] == hub.files(REPO_A)["adapter_model.safetensors"]


def test_push_output_folder_errors_name_the_folder(pushed):
    hub, result = pushed
    errors = result["errors"]
    for case in ("no_adapter", "missing", "no_match", "../outside.txt", "missing.json"):
        assert errors[case] is not None, f"{case}: no ValueError"
        assert errors[case]["folder"] in errors[case]["message"], errors[case]
    assert "adapter_config.json" in errors["no_adapter"]["message"]
    assert "*.nothing" in errors["no_match"]["message"]
    assert "'../outside.txt', which is not a path inside" in errors["../outside.txt"]["message"]
    assert "'missing.json', which is not a file" in errors["missing.json"]["message"]
    # they failed before touching the Hub
    assert ("model", "fishertune-test/never") not in hub.repos


def test_a_whole_model_pushed_over_an_adapter_removes_the_adapter(pushed):
    """Else transformers' Auto classes would follow the stale root adapter_config.json instead of the model."""
    hub, _ = pushed
    assert set(hub.files(REPO_E)) == {"config.json", "model.safetensors", "README.md"}
    assert hub.repo(REPO_E).commits[-1]["deleted"] == ["adapter_config.json", "adapter_model.safetensors"]


def test_dotfiles_and_keys_are_never_uploaded(pushed):
    """The run folder holds .env, .netrc, .ssh/id_rsa, *.pem, ... and `files=` even lists them: none goes up."""
    hub, _ = pushed
    assert set(hub.files(REPO_D)) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert set(hub.files(REPO_D + "-base")) == BASE_FILES
    for (_, repo_id), repo in hub.repos.items():
        for path, data in repo.files.items():
            assert not data.startswith(b"SECRET"), (repo_id, path)
            assert not any(part.startswith(".") for part in path.split("/")), (repo_id, path)


def test_peft_model_push_to_hub(pushed):
    hub, result = pushed
    repo = hub.repo(REPO_B)
    assert repo.private is False
    assert repo.create_payload == {"name": "run-b", "organization": "fishertune-test", "visibility": "public"}
    files = hub.files(REPO_B)
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    ref_b = result["ref_b"]
    _assert_same_tensors(files["adapter_model.safetensors"], os.path.join(ref_b, "adapter_model.safetensors"))
    with open(os.path.join(ref_b, "adapter_config.json"), "rb") as f:
        assert json.loads(files["adapter_config.json"]) == json.loads(f.read())
    # the model was changed after (a): (b)'s adapter is different and went up through LFS itself
    assert files["adapter_model.safetensors"] != hub.files(REPO_A)["adapter_model.safetensors"]
    assert repo.lfs_paths == {"adapter_model.safetensors"}
    assert len(repo.commits) == 1 and result["url_b"] == f"{hub.endpoint}/{REPO_B}/commit/{repo.commits[0]['oid']}"
    # transformers probed for an existing model card first and got a clean 404 EntryNotFound
    probe = hub.calls("HEAD", rf"^/{REPO_B}/resolve/main/README.md$")
    assert [r["status"] for r in probe] == [404]


def test_fake_hub_rejects_anonymous_writes_and_stops():
    """The fake enforces the token (so the assertions above mean something) and frees its port on exit."""
    import socket

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    with FakeHub() as hub:
        api = HfApi(endpoint=hub.endpoint)
        with pytest.raises(HfHubHTTPError) as err:
            api.create_repo("someone/anon", token=False)
        assert err.value.response.status_code == 401
        assert api.create_repo("someone/ok", token=TOKEN, private=True).repo_id == "someone/ok"
        assert hub.repo("someone/ok").private is True
        port = int(hub.endpoint.rsplit(":", 1)[1])
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex(("127.0.0.1", port)) != 0
