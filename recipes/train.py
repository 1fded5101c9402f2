r"""Train FisherTune (or an ablation baseline), evaluate per target domain, write the output folder.

    python recipes/train.py                                   # the offline demo (recipes/configs/demo.yaml)
    python recipes/train.py --config demo --max_steps 20      # YAML sets defaults, flags override
    python recipes/train.py --config=path/to/my.yaml
    accelerate launch --config_file recipes/accelerate/1gpu.yaml recipes/train.py \
        --config gtav_dinov2_large_mask2former --data_root /data/gtav \
        --target_roots cityscapes=/data/cityscapes bdd100k=/data/bdd100k mapillary=/data/mapillary

YAML keys and flags are the fields of `fishertune.experiment.ExperimentArguments` and
`fishertune.training.FisherTuneTrainingArguments`; the defaults listed below are the library's.
"""

import os
import sys

from fishertune.experiment import parse_experiment_args, run_experiment

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def main(argv=None):
    exp, targs, config_path = parse_experiment_args(
        argv, configs_dir=CONFIGS_DIR, default_config="demo", description=__doc__
    )
    return run_experiment(exp, targs, config_path=config_path)


if __name__ == "__main__":
    main(sys.argv[1:])
