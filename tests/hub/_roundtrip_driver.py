"""Subprocess side of test_roundtrip.py: push a run, or load one back by repo id, in a fresh interpreter.

Fresh, so that HF_ENDPOINT is set before huggingface_hub is imported and nothing of the pushing process (a
cache, a registered class, the output folder) helps the load. Refuses to run unless the endpoint is on 127.0.0.1.

    python _roundtrip_driver.py recipe  WORK REPO TOKEN [train.py flags]  # push, save local logits, delete the folder
    python _roundtrip_driver.py library WORK REPO TOKEN STRATEGY         # FisherTuneTrainer on the tiny model
    python _roundtrip_driver.py load    WORK REPO HOW                    # HOW: auto_peft, auto_model, pipeline, snippet
    python _roundtrip_driver.py backbone WORK REPO TOKEN                 # a tiny DINOv2 on the Hub
    python _roundtrip_driver.py strategies WORK PREFIX TOKEN STRATEGY... # one library run per hub_strategy

Each writes WORK/<mode or HOW>.json (`{"traceback": ...}` on failure) and logits as WORK/<name>.pt.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
TRAIN = os.path.join(os.path.dirname(TESTS), "recipes", "train.py")


def logits(model, x):
    import torch

    with torch.no_grad():
        return model.semantic_logits(model(pixel_values=x), tuple(x.shape[-2:]))


def recipe(work: str, repo: str, token: str, *flags: str) -> dict:
    import torch

    from fishertune.experiment import load_output

    out = os.path.join(work, "run")
    train = runpy.run_path(TRAIN, run_name="recipe_train")["main"]
    result = train(["--quick", "true", "--output_dir", out, "--push_to_hub", "true", "--hub_model_id", repo,
                    "--hub_token", token, *flags])  # fmt: skip
    model, _ = load_output(out, device="cpu")
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "logits": logits(model, x)}, os.path.join(work, "local.pt"))
    shutil.rmtree(out)  # the load must come from the Hub alone
    return {"push_url": str(result["push_url"])}


def library(work: str, repo: str, token: str, strategy: str) -> dict:
    import torch

    sys.path.insert(0, TESTS)
    from fishertune.models import processor_for
    from training._tiny import SIZE, ensure_fisher, make_trainer

    ensure_fisher()
    out = os.path.join(work, "lib")
    trainer = make_trainer(out, push_to_hub=True, hub_model_id=repo, hub_token=token, hub_strategy=strategy,
                           save_strategy="steps", save_steps=4)  # fmt: skip
    trainer.processing_class = processor_for([123.7, 116.3, 103.5], [58.4, 57.1, 57.4])
    trainer.train()
    url = trainer.push_to_hub()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    torch.save({"x": x, "logits": logits(trainer.model.eval(), x)}, os.path.join(work, "local.pt"))
    shutil.rmtree(out)
    return {"push_url": str(url)}


def backbone(work: str, repo: str, token: str) -> dict:
    """A tiny pretrained DINOv2 on the (fake) Hub, as a user's `backbone:` Hub id would be."""
    import torch
    from huggingface_hub import HfApi
    from transformers import Dinov2Config, Dinov2Model

    from fishertune.experiment.arguments import BUILTIN_BACKBONES

    torch.manual_seed(3)
    folder = os.path.join(work, "backbone")
    Dinov2Model(Dinov2Config(**BUILTIN_BACKBONES["vit-micro-test"])).save_pretrained(folder)
    api = HfApi(token=token)
    api.create_repo(repo)
    api.upload_folder(repo_id=repo, folder_path=folder)
    shutil.rmtree(folder)
    return {}


def strategies(work: str, prefix: str, token: str, *names: str) -> dict:
    """One tiny FisherTuneTrainer run per `hub_strategy` in `names`, each to `<prefix>-<strategy>`, then push_to_hub."""
    sys.path.insert(0, TESTS)
    from training._tiny import ensure_fisher, make_trainer

    ensure_fisher()
    written = {}
    for name in names:
        out = os.path.join(work, name)
        trainer = make_trainer(out, push_to_hub=True, hub_model_id=f"{prefix}-{name}",
                               hub_token=token, hub_strategy=name, save_strategy="steps", save_steps=4)  # fmt: skip
        trainer.train()
        written[name] = sorted(os.listdir(out))  # what training left in output_dir (checkpoint pushes add nothing)
        trainer.push_to_hub()
    return {"written": written}


def card_snippet(repo: str) -> str:
    """The Python block under the card's "How to load" heading, as the pushed README shows it."""
    from huggingface_hub import hf_hub_download

    with open(hf_hub_download(repo, "README.md"), encoding="utf-8") as f:
        card = f.read()
    match = re.search(r"## How to load\s+```python\n(.*?)```", card, re.S)
    assert match, f"no python block under '## How to load' in the card:\n{card}"
    return match.group(1)


def load(work: str, repo: str, how: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    x = torch.load(os.path.join(work, "local.pt"))["x"]
    result: dict = {}
    if how == "auto_peft":
        from peft import AutoPeftModel

        import fishertune  # noqa: F401

        model = AutoPeftModel.from_pretrained(repo)
    elif how == "auto_model":
        from transformers import AutoModelForSemanticSegmentation

        import fishertune  # noqa: F401

        model = AutoModelForSemanticSegmentation.from_pretrained(repo)
    elif how == "pipeline":
        from transformers import pipeline

        import fishertune  # noqa: F401

        segment = pipeline("image-segmentation", model=repo)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
        result["labels"] = sorted({r["label"] for r in segment(image)})
        model = segment.model
    elif how == "snippet":
        namespace: dict = {}
        code = card_snippet(repo)
        exec(compile(code, "<card snippet>", "exec"), namespace)  # verbatim, in a fresh interpreter
        result["snippet"] = code
        model = namespace["model"]
    else:
        raise SystemExit(f"unknown HOW {how!r}")
    result["type"] = type(model).__name__
    torch.save(logits(model.eval(), x), os.path.join(work, f"{how}.pt"))
    return result


if __name__ == "__main__":
    from huggingface_hub import constants

    if not constants.ENDPOINT.startswith("http://127.0.0.1:") or not constants.HF_HUB_DISABLE_XET:
        raise SystemExit(f"refusing to run: ENDPOINT={constants.ENDPOINT}")
    mode, work, *rest = sys.argv[1:]
    name = rest[1] if mode == "load" else mode
    try:
        res = {"recipe": recipe, "library": library, "load": load, "strategies": strategies, "backbone": backbone}[
            mode
        ](work, *rest)
    except BaseException:
        res = {"traceback": traceback.format_exc()}
    with open(os.path.join(work, f"{name}.json"), "w") as f:
        json.dump(res, f)
