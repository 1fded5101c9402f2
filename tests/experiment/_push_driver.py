"""Subprocess side of test_push.py: `recipes/train.py --quick --push_to_hub` against the fake Hub.

A fresh interpreter, so that HF_ENDPOINT is set before huggingface_hub is imported (as for a user).
Refuses to run unless the endpoint is on 127.0.0.1. Usage: `python _push_driver.py WORKDIR REPO_ID TOKEN`.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(os.path.dirname(os.path.dirname(HERE)), "recipes", "train.py")


def main(work: str, repo_id: str, token: str) -> dict:
    from huggingface_hub import constants

    if not constants.ENDPOINT.startswith("http://127.0.0.1:") or not constants.HF_HUB_DISABLE_XET:
        raise SystemExit(f"refusing to run: ENDPOINT={constants.ENDPOINT}")
    out = os.path.join(work, "run")
    train = runpy.run_path(TRAIN, run_name="recipe_train")["main"]
    result = train(
        [
            "--quick",
            "true",
            "--output_dir",
            out,
            "--push_to_hub",
            "true",
            "--hub_model_id",
            repo_id,
            "--hub_token",
            token,
            "--hub_private_repo",
            "true",
        ]
    )
    return {"output_dir": out, "push_url": result["push_url"], "metrics": result["metrics"]}


if __name__ == "__main__":
    work = sys.argv[1]
    try:
        res = main(*sys.argv[1:4])
    except BaseException:
        res = {"traceback": traceback.format_exc()}
    with open(os.path.join(work, "result.json"), "w") as f:
        json.dump(res, f)
