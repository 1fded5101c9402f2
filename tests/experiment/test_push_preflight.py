"""A push that cannot give a loadable Hub repo is refused at start, before any data or training."""

from __future__ import annotations

import pytest
import yaml

import fishertune.experiment.run as run_module

from .test_recipe_resume import TINY, recipe_main


def test_push_of_an_adapter_on_a_local_backbone_folder_fails_before_any_work(tmp_path, monkeypatch):
    backbone = tmp_path / "my_backbone"
    backbone.mkdir()
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "backbone": str(backbone)}))

    def reached(*a, **k):
        raise AssertionError("the data was built: the push check came too late")

    monkeypatch.setattr(run_module, "build_train_dataset", reached)
    argv = ["--config", str(config), "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true",
            "--hub_model_id", "user/r"]  # fmt: skip
    with pytest.raises(ValueError, match=r"local backbone folder .*my_backbone.*--merge true"):
        recipe_main("train")(argv)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
