r"""Evaluate a trained output folder per target domain and print the table.

    python recipes/evaluate.py --model outputs/demo                       # the run's own targets
    python recipes/evaluate.py --model outputs/demo --targets synthetic:blur synthetic:palette
    python recipes/evaluate.py --model outputs/camvid --targets camvid:target_dusk \
        --target_roots camvid=/data/camvid
"""

import json
import sys

from fishertune.experiment import EvaluateArguments, evaluate_output, format_table, parse_args


def main(argv=None):
    (args, _) = parse_args((EvaluateArguments,), argv, description=__doc__)
    overrides = {
        k: getattr(args, k)
        for k in (
            "eval_mode",
            "eval_scale",
            "max_eval_samples",
            "label_space",
            "label_mapping",
            "num_synthetic_eval_samples",
        )
    }
    if args.target_roots:
        overrides["target_roots"] = args.target_roots
    metrics = evaluate_output(args.model, targets=args.targets or None, device=args.device, **overrides)
    print(format_table(metrics))
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(metrics, f, indent=2)
        print(f"Metrics written to {args.output_file}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
