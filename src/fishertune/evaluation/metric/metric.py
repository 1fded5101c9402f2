"""fishertune's mean IoU as an `evaluate` metric, loadable offline from this folder.

    import evaluate, fishertune.evaluation as fe
    metric = evaluate.load(fe.METRIC_PATH)
    metric.compute(predictions=[pred_map, ...], references=[label_map, ...], num_labels=19, ignore_index=255)

The arguments (`num_labels`, `ignore_index`, `nan_to_num`, `label_map`, `reduce_labels`) and result keys
(mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy) are the Hub's `mean_iou`
metric's; the numbers come from `fishertune.evaluation.metrics`, the code the library's own evaluator uses.
One difference: an id outside [0, num_labels) that is not `ignore_index` is an error here, where the Hub's
histograms drop it silently.
"""

import datasets
import evaluate
import numpy as np
import torch

from fishertune.data.labels import reduce_labels as reduce_label_ids
from fishertune.evaluation.metrics import confusion_matrix, metrics_from_confusion

_DESCRIPTION = "Mean intersection-over-union of semantic segmentation maps, from one confusion matrix."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`List[ndarray]`): predicted class-id maps, each [H, W].
    references (`List[ndarray]`): label maps, each [H, W], same sizes as the predictions.
    num_labels (`int`): number of classes (`num_classes` is accepted as an older spelling).
    ignore_index (`int`, *optional*, defaults to 255): label value left out.
    nan_to_num (`float`, *optional*): replace every NaN of the results by this number.
    label_map (`dict[int, int]`, *optional*): old -> new reference ids, every lookup on the original ids;
        applied before `reduce_labels`.
    reduce_labels (`bool`, *optional*, defaults to `False`): reference 0 -> 255 (background ignored), the other
        ids minus 1 (ADE20k's convention).
Returns:
    mean_iou, mean_accuracy, overall_accuracy (floats), per_category_iou, per_category_accuracy
    (arrays; NaN for classes absent from both predictions and references, unless `nan_to_num`).
"""
_CITATION = ""


def _prepare_reference(ref, label_map, reduce_labels: bool) -> np.ndarray:
    ref = np.asarray(ref, dtype=np.int64)
    if label_map:
        original = ref.copy()
        for old, new in label_map.items():
            ref[original == int(old)] = int(new)
    return reduce_label_ids(ref, 255) if reduce_labels else ref  # the Hub's reduction keeps 255, whatever ignore


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

    def _compute(self, predictions, references, num_labels=None, ignore_index=255, nan_to_num=None, label_map=None,
                 reduce_labels=False, num_classes=None):  # fmt: skip
        if num_labels is None:
            num_labels = num_classes
        elif num_classes is not None and num_classes != num_labels:
            raise ValueError(f"num_labels={num_labels} and num_classes={num_classes} disagree; pass num_labels.")
        if num_labels is None:
            raise ValueError("mean IoU needs num_labels (the number of classes).")
        cm = torch.zeros(num_labels, num_labels, dtype=torch.long)
        for pred, ref in zip(predictions, references):
            ref = _prepare_reference(ref, label_map, reduce_labels)
            pred = torch.as_tensor(np.asarray(pred, dtype=np.int64))
            cm += confusion_matrix(pred, torch.as_tensor(ref), num_labels, ignore_index)
        m = metrics_from_confusion(cm)
        out = {
            "mean_iou": m["mIoU"],
            "mean_accuracy": m["mAcc"],
            "overall_accuracy": m["aAcc"],
            "per_category_iou": np.array(list(m["per_class_iou"].values())),
            "per_category_accuracy": np.array(list(m["per_class_acc"].values())),
        }
        if nan_to_num is not None:
            out = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in out.items()}
        return out
