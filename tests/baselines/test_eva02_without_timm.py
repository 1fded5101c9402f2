"""EVA02 support stays optional: nothing imports timm until an EVA02 is built, and building one
without timm says how to install it. Runs in both venvs (timm is hidden where it is installed)."""

import subprocess
import sys

import pytest
from transformers import AutoConfig

from fishertune.backbones import Eva02BackboneConfig
from fishertune.models import LightSegConfig, build_model


def test_importing_the_package_does_not_import_timm():
    code = (
        "import sys, fishertune, fishertune.models, fishertune.baselines, fishertune.training, fishertune.experiment; "
        "assert 'timm' not in sys.modules, 'timm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backbone", ["timm:eva02_large_patch14_224.mim_m38m", "config"])
def test_building_an_eva02_segmenter_without_timm_asks_to_install_it(backbone, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError, installed or not
    if backbone == "config":
        backbone = Eva02BackboneConfig(timm_model_name="eva02_tiny_patch14_224")
    with pytest.raises(ImportError, match="pip install 'timm"):
        build_model("light", backbone, num_labels=3)


def test_eva02_configs_parse_without_timm():
    # A saved segmenter's nested backbone config resolves through AutoConfig without creating the model.
    assert type(AutoConfig.for_model("eva02")) is Eva02BackboneConfig
    config = LightSegConfig(backbone_config=Eva02BackboneConfig(num_hidden_layers=24).to_dict(), num_labels=3)
    assert isinstance(config.backbone_config, Eva02BackboneConfig) and config.taps == [6, 12, 18, 24]
    reloaded = LightSegConfig.from_dict(config.to_dict())
    assert reloaded.backbone_config.timm_model_name == "eva02_large_patch14_448"
