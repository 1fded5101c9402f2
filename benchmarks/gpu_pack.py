"""Pack what gpu_check.sh's CamVid step reads into a folder of the checkout, so that it travels to a GPU machine.

A lent GPU machine receives the checkout only (64 MiB in all), not the CamVid folder and the ViT-Tiny beside it.
This copies the source split whole and every ``--every``-th image of each evaluation split (in splits.json's
order: the images `dg_camvid.py --eval-every k` scores), rewrites splits.json to list them, copies the backbone's
folder, and writes ``fishertune_pack.json`` (gpu_check.sh then scores the packed splits whole, and the CamVid
report says 1 in k). The folder is
ignored by git (``.gitignore``: ``gpu_carry/``): name it in the device call's ``carry``.

Usage::

    python benchmarks/gpu_pack.py                     # -> gpu_carry/camvid, gpu_carry/backbone/<its name>
    python benchmarks/gpu_pack.py --every 6 --out /tmp/pack
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from dg_camvid_recipe import DEFAULT_BACKBONE, DEFAULT_ROOT, PACK_MARKER  # noqa: E402

TRAIN_SPLIT = "source_train"  # trained on whole; every other split is scored on every k-th image


def pack(root: Path, backbone: Path, out: Path, every: int) -> dict:
    splits_file = root / "splits.json"
    if not splits_file.is_file():
        raise SystemExit(f"gpu_pack: no CamVid splits.json in {root} (--camvid-root)")
    if not (backbone / "config.json").is_file():
        raise SystemExit(f"gpu_pack: no backbone config.json in {backbone} (--backbone)")
    splits = json.loads(splits_file.read_text())
    if TRAIN_SPLIT not in splits:
        raise SystemExit(f"gpu_pack: {splits_file} has no {TRAIN_SPLIT!r} split")
    kept = {name: stems if name == TRAIN_SPLIT else stems[::every] for name, stems in splits.items()}
    camvid, model = out / "camvid", out / "backbone" / backbone.name  # the name labels the report's rows
    for d in (camvid, out / "backbone"):
        if d.exists():
            shutil.rmtree(d)
    for stem in sorted({s for stems in kept.values() for s in stems}):
        for sub, ext in (("images", ".jpg"), ("labels", ".png")):
            src = root / sub / f"{stem}{ext}"
            if not src.is_file():
                raise SystemExit(f"gpu_pack: splits.json lists {stem!r} but {src} is missing")
            dst = camvid / sub / f"{stem}{ext}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    (camvid / "splits.json").write_text(json.dumps(kept, indent=1))
    info = {"source": str(root), "eval_every": every, "images": {k: len(v) for k, v in kept.items()}}
    (camvid / PACK_MARKER).write_text(json.dumps(info, indent=1))
    for src in sorted(p for p in backbone.rglob("*") if p.is_file()):
        # file contents only: ../shared is read-only, and copied modes would make the next pack's rmtree fail
        dst = model / src.relative_to(backbone)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return dict(info, bytes=size)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--camvid-root", default=DEFAULT_ROOT, help="CamVid folder (images/, labels/, splits.json)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="the HF backbone folder the step trains")
    p.add_argument("--every", type=int, default=3, help="keep every k-th image of each evaluation split (default 3)")
    p.add_argument("--out", default=str(HERE.parent / "gpu_carry"))
    args = p.parse_args(argv)
    if args.every < 1:
        p.error(f"--every must be >= 1, got {args.every}")
    info = pack(Path(args.camvid_root), Path(args.backbone), Path(args.out), args.every)
    out = Path(args.out).resolve()
    where = (
        f'the device call carries it: carry=["{out.relative_to(HERE.parent)}"]'
        if out.is_relative_to(HERE.parent)
        else "copy it into the checkout to carry it"
    )
    print(
        f"packed {info['images']} ({info['bytes'] / 2**20:.1f} MiB) into {args.out}; {where} (the whole travelling "
        "tree must stay under 64 MiB)"
    )


if __name__ == "__main__":
    main()
