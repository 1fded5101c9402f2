"""model_cards/: the example cards are the package's cards of real runs, and `model_cards/render.py` gives a run's
own card back from its output folder."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CARDS = sorted((REPO / "model_cards").glob("*/README.md"))


def test_there_are_example_cards():
    assert [p.parent.name for p in CARDS] == ["demo"]


@pytest.mark.parametrize("card", CARDS, ids=lambda p: p.parent.name)
def test_example_card_is_a_hub_card_with_its_files(card):
    from huggingface_hub import ModelCard

    loaded = ModelCard.load(card)
    results = {r.dataset_name: r.metric_value for r in loaded.data.eval_results}
    assert "mean over target domains" in results and len(results) >= 3
    targets = [v for k, v in results.items() if not k.startswith(("source", "mean"))]
    assert results["mean over target domains"] == pytest.approx(sum(targets) / len(targets), abs=0.01)
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", loaded.text):
        assert (card.parent / image).is_file(), image
    assert "/tmp/" not in loaded.text and "/work/" not in loaded.text  # names a Hub repository, not a local path
    # the loading code is the package's current one for that repository (a stale card would show lines that fail)
    from fishertune.hub import load_snippet

    repo = re.search(r'from_pretrained\("([^"]+)"\)', loaded.text).group(1)
    assert load_snippet(repo, is_adapter=True) in loaded.text or load_snippet(repo, is_adapter=False) in loaded.text
    assert loaded.data.base_model, "base_model: a Hub id, never empty"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    helpers = runpy.run_path(str(REPO / "tests/experiment/_helpers.py"))
    out = tmp_path_factory.mktemp("card") / "run"
    micro = ["--backbone", "config:vit-micro-test", "--targets", "synthetic:fog", "--val_split", ""]
    helpers["recipe_main"]("train")(helpers["quick_demo_argv"](out, *micro))
    return out


def test_render_gives_the_runs_own_card_back(quick_run, tmp_path):
    render = runpy.run_path(str(REPO / "model_cards/render.py"), run_name="render")["main"]
    render([str(quick_run), str(tmp_path / "local.md")])
    assert (tmp_path / "local.md").read_text() == (quick_run / "README.md").read_text()
    render([str(quick_run), str(tmp_path / "hub.md"), "--repo_id", "someone/run"])
    hub = (tmp_path / "hub.md").read_text()
    assert 'AutoPeftModel.from_pretrained("someone/run")' in hub and str(quick_run) not in hub
