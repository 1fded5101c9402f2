"""Render the model card of a finished run's output folder with the package's template, as the run would publish it.

    python model_cards/render.py <output folder> model_cards/<name>.md --repo_id <namespace>/<name>

The card is what `recipes/train.py` writes to `<output folder>/README.md` (`fishertune.experiment.card`: the same
context, template and `model-index`), read back from the folder's `config.yaml`, `metrics.json` and selection;
`--repo_id` names the Hub repository the folder would be pushed to (the card's loading code uses it), where the
run's own card names the folder's local path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

import yaml

from fishertune.experiment.card import card_context, render_model_card
from fishertune.experiment.saved import load_experiment_args
from fishertune.outputs import CONFIG_NAME, METRICS_NAME
from fishertune.training import FisherTuneTrainingArguments


def render_output_card(folder: str, repo_id: str | None = None):
    """The `huggingface_hub.ModelCard` of the output folder `folder` (`repo_id`: the Hub repository it names)."""
    exp = load_experiment_args(folder)
    with open(os.path.join(folder, CONFIG_NAME)) as f:
        config = yaml.safe_load(f)
    fields = {f.name for f in dataclasses.fields(FisherTuneTrainingArguments) if f.init}
    targs = FisherTuneTrainingArguments(**{k: v for k, v in config.items() if k in fields})
    with open(os.path.join(folder, METRICS_NAME)) as f:
        metrics = json.load(f)
    lengths = targs.phase_lengths(targs.max_steps)
    return render_model_card(card_context(folder, exp, targs, metrics, lengths, repo_id))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="an output folder of recipes/train.py")
    parser.add_argument("card", help="where to write the card (Markdown)")
    parser.add_argument("--repo_id", default=None, help="the Hub repository the card names (default: the folder)")
    args = parser.parse_args(argv)
    render_output_card(args.folder, args.repo_id).save(args.card)
    print(args.card)


if __name__ == "__main__":
    main()
