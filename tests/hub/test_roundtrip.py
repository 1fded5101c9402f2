"""What the recipe's `--push_to_hub` and `FisherTuneTrainer.push_to_hub` publish loads back from the repo id alone.

Every push and every load runs in its own fresh interpreter (tests/hub/_roundtrip_driver.py) with HF_ENDPOINT on
the local fake Hub, no token, no offline mode and an empty HF_HOME; the pushing process deletes its output folder
before the loads. The loaded model's logits must equal those of the local model the run left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from .fake_hub import FakeHub, client_env

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "hf_fake_token_for_tests"
MICRO = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
ADAPTER, MERGED, LIB = "fishertune-test/adapter", "fishertune-test/merged", "fishertune-test/lib"
BACKBONE, ON_HUB_BACKBONE = "fishertune-test/tiny-dinov2", "fishertune-test/on-hub-backbone"


def drive(hub: FakeHub, work, mode: str, *args: str) -> dict:
    """Run the driver in a fresh process with its own empty HF_HOME; return its JSON result."""
    name = args[1] if mode == "load" else mode
    home = os.path.join(str(work), f"hf_home_{name}")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "_roundtrip_driver.py"), mode, str(work), *args],
                          env=client_env(hub, home), capture_output=True, text=True, timeout=600)  # fmt: skip
    path = os.path.join(str(work), f"{name}.json")
    assert proc.returncode == 0 and os.path.exists(path), proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(path) as f:
        result = json.load(f)
    assert "traceback" not in result, result["traceback"]
    return result


def local_logits(work) -> torch.Tensor:
    return torch.load(os.path.join(str(work), "local.pt"))["logits"]


def loaded_logits(work, how: str) -> torch.Tensor:
    return torch.load(os.path.join(str(work), f"{how}.pt"))


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def adapter_run(hub, tmp_path_factory):
    """The demo recipe (quick, micro backbone, an adapter) pushed with a checkpoint every 3 steps."""
    work = tmp_path_factory.mktemp("adapter")
    drive(hub, work, "recipe", ADAPTER, TOKEN, *MICRO, "--save_strategy", "steps", "--save_steps", "3",
          "--hub_strategy", "checkpoint")  # fmt: skip
    assert not os.path.exists(work / "run")
    return work


@pytest.fixture(scope="module")
def merged_run(hub, tmp_path_factory):
    work = tmp_path_factory.mktemp("merged")
    drive(hub, work, "recipe", MERGED, TOKEN, *MICRO, "--merge", "true")
    return work


@pytest.fixture(scope="module")
def library_run(hub, tmp_path_factory):
    """FisherTuneTrainer on the tiny model, checkpoints at steps 4 and 8 pushed (`hub_strategy="checkpoint"`)."""
    work = tmp_path_factory.mktemp("library")
    drive(hub, work, "library", LIB, TOKEN, "checkpoint")
    return work


def _card(hub, repo: str) -> dict:
    text = hub.files(repo)["README.md"].decode()
    return yaml.safe_load(text.split("---")[1])


def test_recipe_adapter_loads_by_repo_id_with_auto_peft_model(hub, adapter_run):
    result = drive(hub, adapter_run, "load", ADAPTER, "auto_peft")
    assert result["type"] == "PeftModel"
    assert torch.equal(loaded_logits(adapter_run, "auto_peft"), local_logits(adapter_run))
    config = json.loads(hub.files(ADAPTER)["adapter_config.json"])
    assert config["base_model_name_or_path"] == ADAPTER + "-base"
    assert config["auto_mapping"] == {"base_model_class": "AutoModelForSemanticSegmentation",
                                      "parent_library": "transformers"}  # fmt: skip
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(hub.files(ADAPTER + "-base"))
    assert not any(p.startswith("base_model/") for p in hub.files(ADAPTER))
    # `config:` backbone: the card's base_model is the pushed base, a Hub id (never '' nor a local path)
    assert _card(hub, ADAPTER)["base_model"] == ADAPTER + "-base"
    assert hub.unhandled == []


def test_recipe_adapter_on_a_hub_backbone_loads_by_repo_id(hub, tmp_path_factory):
    """A pretrained Hub backbone: the base repo holds the segmenter's config and the backbone's id, not its weights."""
    work = tmp_path_factory.mktemp("hub_backbone")
    drive(hub, work, "backbone", BACKBONE, TOKEN)
    flags = [*MICRO[2:], "--backbone", BACKBONE]
    drive(hub, work, "recipe", ON_HUB_BACKBONE, TOKEN, *flags)
    base = hub.files(ON_HUB_BACKBONE + "-base")
    assert json.loads(base["fishertune_backbone.json"]) == {"backbone": BACKBONE}
    assert not {"model.safetensors", "pytorch_model.bin"} & set(base)
    assert _card(hub, ON_HUB_BACKBONE)["base_model"] == BACKBONE  # the backbone's Hub id
    drive(hub, work, "load", ON_HUB_BACKBONE, "auto_peft")
    assert torch.equal(loaded_logits(work, "auto_peft"), local_logits(work))


def test_recipe_adapter_card_snippet_runs_verbatim(hub, adapter_run):
    result = drive(hub, adapter_run, "load", ADAPTER, "snippet")
    assert f'AutoPeftModel.from_pretrained("{ADAPTER}")' in result["snippet"]
    assert torch.equal(loaded_logits(adapter_run, "snippet"), local_logits(adapter_run))


def test_recipe_honours_hub_strategy_checkpoint(hub, adapter_run):
    files = hub.files(ADAPTER)
    # the last complete checkpoint (step 6 of 6), FisherTune state included, in last-checkpoint/
    state = json.loads(files["last-checkpoint/trainer_state.json"])
    assert state["global_step"] == 6
    assert "last-checkpoint/fishertune_trainer_state.json" in files
    assert "last-checkpoint/adapter_model.safetensors" in files
    summaries = [c["summary"] for c in hub.repo(ADAPTER).commits]
    assert "Training in progress, step 3" in summaries and "Training in progress, step 6" in summaries
    assert summaries[-1] == "Upload FisherTune adapter"  # the run's files after training


def test_merged_repo_loads_with_auto_model_pipeline_and_card_snippet(hub, merged_run):
    assert "adapter_config.json" not in hub.files(MERGED)
    for how in ("auto_model", "pipeline", "snippet"):
        result = drive(hub, merged_run, "load", MERGED, how)
        assert torch.equal(loaded_logits(merged_run, how), local_logits(merged_run)), how
    assert result["type"] == "LightSegmenter"
    assert f'pipeline("image-segmentation", model="{MERGED}")' in result["snippet"]
    assert "base_model" not in _card(hub, MERGED)  # a `config:` backbone has no Hub id: absent, never ''


def test_library_push_to_hub_loads_by_repo_id(hub, library_run):
    result = drive(hub, library_run, "load", LIB, "auto_peft")
    assert result["type"] == "PeftModel"
    assert torch.equal(loaded_logits(library_run, "auto_peft"), local_logits(library_run))
    snippet = drive(hub, library_run, "load", LIB, "snippet")
    assert torch.equal(loaded_logits(library_run, "snippet"), local_logits(library_run))
    assert f'AutoPeftModel.from_pretrained("{LIB}")' in snippet["snippet"]
    card = _card(hub, LIB)
    assert card["base_model"] == LIB + "-base" and card["library_name"] == "peft"
    root = {p for p in hub.files(LIB) if "/" not in p}
    # the model, its processor and card: no training_args.bin (it pickles the token), nothing else of output_dir
    assert root == {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json", "README.md"}
    assert "preprocessor_config.json" in hub.files(LIB + "-base")
    assert all(TOKEN.encode() not in data for data in hub.files(LIB).values())


def test_library_honours_hub_strategy_checkpoint(hub, library_run):
    files = hub.files(LIB)
    assert json.loads(files["last-checkpoint/trainer_state.json"])["global_step"] == 8
    assert "last-checkpoint/fishertune_trainer_state.json" in files
    assert "last-checkpoint/training_args.bin" not in files
    summaries = [c["summary"] for c in hub.repo(LIB).commits]
    assert summaries == ["Training in progress, step 4", "Training in progress, step 8", "End of training"]


@pytest.mark.parametrize("strategy, commits, folders", [
    ("end", ["End of training"], set()),
    ("every_save", ["Training in progress, step 4", "Training in progress, step 8", "End of training"], set()),
    ("all_checkpoints", ["Training in progress, step 4", "Training in progress, step 8", "End of training"],
     {"checkpoint-4", "checkpoint-8"}),
])  # fmt: skip
def test_library_honours_every_hub_strategy(hub, strategy_runs, strategy, commits, folders):
    repo = f"{LIB}-{strategy}"
    assert [c["summary"] for c in hub.repo(repo).commits] == commits
    files = hub.files(repo)
    assert {p.split("/")[0] for p in files if "/" in p} == folders
    for folder in folders:  # each checkpoint complete, FisherTune state included, and no pickled arguments
        assert {f"{folder}/fishertune_trainer_state.json", f"{folder}/adapter_model.safetensors"} <= set(files)
        assert f"{folder}/training_args.bin" not in files
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == repo + "-base"
    written = strategy_runs[1][strategy]  # what training left in output_dir: checkpoint pushes write nothing there
    assert {"checkpoint-4", "checkpoint-8"} <= set(written) and "base_model" not in written


@pytest.fixture(scope="module")
def strategy_runs(hub, tmp_path_factory):
    work = tmp_path_factory.mktemp("strategies")
    result = drive(hub, work, "strategies", LIB, TOKEN, "end", "every_save", "all_checkpoints")
    return work, result["written"]
