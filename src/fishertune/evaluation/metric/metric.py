"""fishertune's mean IoU as an `evaluate` metric, loadable offline from this folder.

    import evaluate, fishertune.evaluation as fe
    metric = evaluate.load(fe.METRIC_PATH)
    metric.compute(predictions=[pred_map, ...], references=[label_map, ...], num_classes=19, ignore_index=255)

The arguments and result keys follow the Hub's `mean_iou` metric (mean_iou, mean_accuracy,
overall_accuracy, per_category_iou, per_category_accuracy); the numbers come from
`fishertune.evaluation.metrics`, the code the library's own evaluator uses.
"""

import datasets
import evaluate
import numpy as np
import torch

from fishertune.evaluation.metrics import confusion_matrix, metrics_from_confusion

_DESCRIPTION = "Mean intersection-over-union of semantic segmentation maps, from one confusion matrix."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted class-id maps, each [H, W].
    references (`List[ndarray]`): label maps, each [H, W], same sizes as the predictions.
    num_classes (`int`): number of classes.
    ignore_index (`int`, *optional*, defaults to 255): label value left out.
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy
    (arrays; NaN for classes absent from both predictions and references).
"""
_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FishertuneMeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    def _compute(self, predictions, references, num_classes, ignore_index=255):
        cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
        for pred, ref in zip(predictions, references):
            pred, ref = torch.as_tensor(np.asarray(pred, dtype=np.int64)), torch.as_tensor(np.asarray(ref, dtype=np.int64))
            cm += confusion_matrix(pred, ref, num_classes, ignore_index)
        m = metrics_from_confusion(cm)
        return {
            "mean_iou": m["mIoU"],
            "mean_accuracy": m["mAcc"],
            "overall_accuracy": m["aAcc"],
            "per_category_iou": np.array(list(m["per_class_iou"].values())),
            "per_category_accuracy": np.array(list(m["per_class_acc"].values())),
        }
