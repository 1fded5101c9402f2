"""benchmarks/dg_camvid_drfim.py re-scores saved statistics: its Jaccards equal a direct computation."""

import json
import sys
from pathlib import Path

import torch

from fishertune.fisher import EstimationConfig, estimate_scores, estimate_statistics, save_statistics

from _benchmark_modules import load_benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fisher"))
from fisher_helpers import image_batches, tiny_dinov2  # noqa: E402

drfim = load_benchmark("dg_camvid_drfim")
selection = load_benchmark("dg_camvid_selection")


def test_tables_from_saved_statistics(tmp_path):
    model = tiny_dinov2(layers=2)
    weights = {
        n: m.weight for n, m in model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "fc1", "fc2"))
    }
    data = image_batches(4, b=8)
    config = EstimationConfig(criterion="dr_fim", estimator="variational")
    runs = tmp_path / "runs" / "full_v2"
    work = runs / "dr_fim_var__seed0_work"
    work.mkdir(parents=True)
    save_statistics(
        estimate_statistics(model, data, weights, config, per_batch_delta=True),
        work / "fishertune_statistics.safetensors",
    )
    (runs / "recipe.json").write_text(json.dumps({"delta_max": 0.05, "extra": {}}))
    (runs / "dr_fim_var__seed0.json").write_text(
        json.dumps({"options": {"criterion": "dr_fim", "estimator": "variational"}})
    )
    drfim.main(["--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "dg_camvid_drfim_full_v2.json").read_text())["seed 0"]
    masks = {
        c: selection.top_mask(estimate_scores(model, data, weights, EstimationConfig(criterion=c)), 0.05)
        for c in ("fim", "delta_fim", "dr_fim")
    }  # the same passes again, through the public API
    default = result["exchanges"][0]
    assert default["exchange"] == "rank (default)"
    assert default["jaccard_F"] == drfim.jaccard(masks["dr_fim"], masks["fim"])
    assert default["jaccard_dF"] == drfim.jaccard(masks["dr_fim"], masks["delta_fim"])
    assert 0.0 < result["share_min_dominates"] <= 1.0 and result["floor"] > 0
    frac = torch.tensor([[float("nan") if v is None else v for v in row] for row in result["maps"]["dr_fim"]])
    selected = sum(int(m.sum()) for m in masks["dr_fim"].values())
    # Q K V (16x16) and FFN (fc1 + fc2 at DINOv2's mlp_ratio 4: 2 x 64 x 16) x 2 blocks
    sizes = torch.tensor([[256, 256], [256, 256], [256, 256], [2048, 2048]], dtype=torch.float64)
    assert round(float((frac.double() * sizes).sum())) == selected
    assert "| rank (default) |" in (tmp_path / "dg_camvid_drfim_full_v2.md").read_text()
