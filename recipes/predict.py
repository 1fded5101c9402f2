"""Segment a folder of images with a trained output folder: colour masks, overlays, class legend (PNG).

python recipes/predict.py --model outputs/demo --images my_images/ --output_dir predictions/
python recipes/predict.py --model outputs/camvid --images frames/ --device cuda
"""

import os
import sys

from fishertune.experiment import PredictArguments, parse_args, predict_output
from fishertune.outputs import PREDICT_OUTPUTS


def main(argv=None):
    (args, _) = parse_args((PredictArguments,), argv)
    done = predict_output(args.model, args.images, args.output_dir, device=args.device, mode=args.eval_mode)
    out = os.path.abspath(args.output_dir)
    print(f"Predicted {len(done)} image(s) into {out}: {', '.join(PREDICT_OUTPUTS)}")
    if done.skipped:
        print(f"Skipped {len(done.skipped)} unreadable file(s):")
        print("\n".join(f"  {path}: {reason}" for path, reason in done.skipped))
    return done


if __name__ == "__main__":
    main(sys.argv[1:])
