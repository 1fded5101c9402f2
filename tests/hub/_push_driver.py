"""Subprocess side of tests/hub/test_push.py: runs the pushes against the fake Hub.

It runs in a fresh interpreter so that ``HF_ENDPOINT`` / ``HF_HUB_DISABLE_XET`` are in the
environment before ``huggingface_hub`` reads them at import time, exactly as for a user. It refuses to
run unless the endpoint is on 127.0.0.1. Usage: ``python _push_driver.py WORKDIR`` -> WORKDIR/result.json.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

TOKEN = "hf_fake_token_for_tests"
REPO_A = "fishertune-test/run-a"
REPO_B = "fishertune-test/run-b"
REPO_C = "fishertune-test/run-c"
REPO_D = "fishertune-test/run-d"
REPO_E = "fishertune-test/run-e"


def tiny_peft_model():
    import torch
    from peft import get_peft_model
    from transformers import ViTConfig, ViTForImageClassification

    import fishertune

    torch.manual_seed(0)
    cfg = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_labels=3,
    )
    model = ViTForImageClassification(cfg)
    config = fishertune.FisherTuneConfig(init_criterion="magnitude", modules_to_save=["classifier"])
    return get_peft_model(model, config)


def make_run_folder(peft_model, run_dir: str) -> None:
    """A run output folder as ``--push_to_hub`` sees it, plus checkpoints that must stay local."""
    import torch
    from safetensors.torch import save_file

    peft_model.save_pretrained(run_dir)
    with open(os.path.join(run_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write("---\nlibrary_name: peft\ntags:\n- fishertune\n---\n\n# FisherTune adapter\n\nmIoU 42.0\n")
    with open(os.path.join(run_dir, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump({"cityscapes": {"mIoU": 42.0, "aAcc": 90.0}}, f)
    with open(os.path.join(run_dir, "config.yaml"), "w", encoding="utf-8") as f:
        f.write("method: fishertune\ninit_criterion: magnitude\n")
    scores = {"vit.encoder.layer.0.attention.attention.query.weight": torch.rand(32, 32)}
    save_file(scores, os.path.join(run_dir, "fishertune_scores.safetensors"))
    with open(os.path.join(run_dir, "sensitivity_map.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    for ckpt in ("checkpoints/step_10", "checkpoint-20"):
        os.makedirs(os.path.join(run_dir, ckpt))
        peft_model.save_pretrained(os.path.join(run_dir, ckpt))
    # the adapter's base (PEFT records none for a model built from a config): pushed to "<repo>-base"
    from fishertune.training.hub_push import save_base

    save_base(peft_model, os.path.join(run_dir, "base_model"))
    plant_secrets(run_dir)


#: What a user's folder may hold besides the run: never uploaded, whatever `files=` says.
SECRETS = (
    ".env",
    ".netrc",
    ".ssh/id_rsa",
    ".ssh/config",
    "server.pem",
    "deploy.key",
    "id_ed25519",
    ".git/config",
    "sub/.hidden/notes.txt",
    "base_model/.env",
)


def plant_secrets(folder: str) -> None:
    for rel in SECRETS:
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"SECRET {rel}\n")


def main(work: str) -> dict:
    from huggingface_hub import constants

    # Safety net: never talk to anything but the local fake.
    if not constants.ENDPOINT.startswith("http://127.0.0.1:") or not constants.HF_HUB_DISABLE_XET:
        raise SystemExit(f"refusing to run: ENDPOINT={constants.ENDPOINT} DISABLE_XET={constants.HF_HUB_DISABLE_XET}")

    from fishertune.hub import push_output_folder

    result: dict = {"endpoint": constants.ENDPOINT}

    # Error cases first: they must fail before any request.
    errors = {}
    empty = os.path.join(work, "empty_run")
    os.makedirs(empty)
    with open(os.path.join(empty, "metrics.json"), "w") as f:
        f.write("{}")
    for name, folder in (("no_adapter", empty), ("missing", os.path.join(work, "does_not_exist"))):
        try:
            push_output_folder(folder, "fishertune-test/never", token=TOKEN)
            errors[name] = None
        except ValueError as e:
            errors[name] = {"folder": folder, "message": str(e)}
    result["errors"] = errors

    peft_model = tiny_peft_model()

    # (a) the run output folder through push_output_folder
    run_dir = os.path.join(work, "run_a")
    make_run_folder(peft_model, run_dir)
    result["url_a"] = str(push_output_folder(run_dir, REPO_A, token=TOKEN, private=True))
    # unchanged -> no-op
    result["url_a_again"] = str(push_output_folder(run_dir, REPO_A, token=TOKEN, private=True))
    result["run_dir"] = run_dir

    # files= lists what goes up (a run manifest's files): secrets in it are still left out
    listed = [
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "base_model/config.json",
        "base_model/model.safetensors",
        *SECRETS,
    ]
    result["url_d"] = str(push_output_folder(run_dir, REPO_D, token=TOKEN, files=listed))
    for bad in ("../outside.txt", "missing.json"):
        try:
            push_output_folder(run_dir, "fishertune-test/never", token=TOKEN, files=[bad])
            errors[bad] = None
        except ValueError as e:
            errors[bad] = {"folder": run_dir, "message": str(e)}

    # the same repo gets an adapter, then a whole model: the adapter's files at the root must go
    push_output_folder(run_dir, REPO_E, token=TOKEN, allow_patterns=["adapter_*", "README.md", "base_model/*"])
    whole = os.path.join(work, "whole")
    from transformers import ViTForImageClassification

    ViTForImageClassification(peft_model.get_base_model().config).save_pretrained(whole)
    result["url_e"] = str(push_output_folder(whole, REPO_E, token=TOKEN))

    # allow_patterns restricts the upload; a pattern matching nothing is an error before any request
    result["url_c"] = str(
        push_output_folder(run_dir, REPO_C, token=TOKEN, allow_patterns=["adapter_*", "README.md", "base_model/*"])
    )
    try:
        push_output_folder(run_dir, "fishertune-test/never", token=TOKEN, allow_patterns=["*.nothing"])
        errors["no_match"] = None
    except ValueError as e:
        errors["no_match"] = {"folder": run_dir, "message": str(e)}

    # (b) PeftModel.push_to_hub (transformers' PushToHubMixin) after a "training step", so that its
    # adapter bytes differ from (a) and really travel (no LFS dedup); keep a local save to compare against
    import torch

    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.125)
    ref_b = os.path.join(work, "ref_b")
    peft_model.save_pretrained(ref_b)
    result["url_b"] = str(peft_model.push_to_hub(REPO_B, token=TOKEN, private=False))
    result["ref_b"] = ref_b
    return result


if __name__ == "__main__":
    work = sys.argv[1]
    try:
        out = main(work)
    except BaseException:
        out = {"traceback": traceback.format_exc()}
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(out, f)
