"""Label spaces of the supported datasets and the maps from their raw ids to train ids.

Every map is a 256-entry lookup table (LUT) over the raw uint8 ids of the label files, plus a
mask of the raw ids the map knows. A raw id outside that mask is a data error (wrong folder,
wrong file type), reported with the file name by the loaders instead of being silently ignored.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

# The 19 Cityscapes evaluation classes, in train-id order.
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

# (label id, train id) of every Cityscapes label, as defined by cityscapesscripts/helpers/labels.py.
# Copied rather than imported so that the package does not depend on cityscapesscripts; the test
# suite checks this table against the official one. 'license plate' has id -1, which the uint8
# label files store as 255, so raw 255 is ignored too.
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255,
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8,
    22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17,
    33: 18, -1: 255,
}  # fmt: skip

# METHOD.md: these GTAV label ids map to train ids 0..18 in this order, every other id to 255.
GTAV_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)

# Mapillary Vistas v1.2: the 66 classes in id order (config.json of the release), and the
# Cityscapes train id each maps to. The release defines no official map to Cityscapes; this one
# follows the usual DGSS practice: lane markings, manholes and potholes are road, curbs and
# pedestrian areas sidewalk, the three rider kinds rider, every pole-like support pole, only the
# front of traffic signs is a sign, sand is terrain. Everything else (animals, guard rails,
# bridges, water, snow, mountain, caravans, trailers, other vehicles, void) is ignored.
MAPILLARY_CLASSES = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb",
    "construction--barrier--fence", "construction--barrier--guard-rail",
    "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain",
    "construction--flat--curb-cut", "construction--flat--parking",
    "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane",
    "construction--flat--sidewalk", "construction--structure--bridge",
    "construction--structure--building", "construction--structure--tunnel", "human--person",
    "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand",
    "nature--sky", "nature--snow", "nature--terrain", "nature--vegetation", "nature--water",
    "object--banner", "object--bench", "object--bike-rack", "object--billboard",
    "object--catch-basin", "object--cctv-camera", "object--fire-hydrant", "object--junction-box",
    "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole",
    "object--street-light", "object--support--pole", "object--support--traffic-sign-frame",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--back",
    "object--traffic-sign--front", "object--trash-can", "object--vehicle--bicycle",
    "object--vehicle--boat", "object--vehicle--bus", "object--vehicle--car",
    "object--vehicle--caravan", "object--vehicle--motorcycle", "object--vehicle--on-rails",
    "object--vehicle--other-vehicle", "object--vehicle--trailer", "object--vehicle--truck",
    "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle", "void--unlabeled",
)  # fmt: skip
MAPILLARY_TO_CITYSCAPES = {
    "construction--flat--road": "road", "construction--flat--service-lane": "road",
    "construction--flat--bike-lane": "road", "construction--flat--crosswalk-plain": "road",
    "marking--crosswalk-zebra": "road", "marking--general": "road", "object--manhole": "road",
    "object--pothole": "road", "construction--flat--sidewalk": "sidewalk",
    "construction--barrier--curb": "sidewalk", "construction--flat--curb-cut": "sidewalk",
    "construction--flat--pedestrian-area": "sidewalk",
    "construction--structure--building": "building", "construction--barrier--wall": "wall",
    "construction--barrier--fence": "fence", "object--support--pole": "pole",
    "object--support--utility-pole": "pole", "object--support--traffic-sign-frame": "pole",
    "object--street-light": "pole", "object--traffic-light": "traffic light",
    "object--traffic-sign--front": "traffic sign", "nature--vegetation": "vegetation",
    "nature--terrain": "terrain", "nature--sand": "terrain", "nature--sky": "sky",
    "human--person": "person", "human--rider--bicyclist": "rider",
    "human--rider--motorcyclist": "rider", "human--rider--other-rider": "rider",
    "object--vehicle--car": "car", "object--vehicle--truck": "truck",
    "object--vehicle--bus": "bus", "object--vehicle--on-rails": "train",
    "object--vehicle--motorcycle": "motorcycle", "object--vehicle--bicycle": "bicycle",
}  # fmt: skip

# CamVid (SegNet 11-class version, see shared/data/camvid/README.md); raw id 11 is void.
CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_VOID_ID = 11
# Closest Cityscapes train id of each CamVid class (README table); bicyclist -> bicycle.
CAMVID_TO_CITYSCAPES = (10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 18)


def reduce_labels(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Drop a background class 0: 0 -> `ignore_index`, every other id minus 1, `ignore_index` kept (the Hub
    `mean_iou`'s and transformers' image processors' `reduce_labels`, e.g. for ADE20k)."""
    label = np.asarray(label).astype(np.int64)
    out = label - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out


class LabelMap:
    """A raw-id -> train-id lookup table plus the set of raw ids it knows.

    Args:
        mapping (`dict[int, int]`): raw id -> train id (255 = ignore). Negative raw ids are taken
            modulo 256, the way uint8 label files store them.
        class_names (`Sequence[str]`): names of the train ids, index = train id.
        accept_all (`bool`, *optional*, defaults to `False`): every raw id not in `mapping` maps
            to 255 instead of being an error (the GTAV convention of METHOD.md).
    """

    def __init__(self, mapping: dict[int, int], class_names, accept_all: bool = False):
        self.class_names = tuple(class_names)
        self.lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self.known = np.full(256, accept_all, dtype=bool)
        for raw, train in mapping.items():
            if not (train == IGNORE_INDEX or 0 <= train < len(self.class_names)):
                raise ValueError(f"train id {train} of raw id {raw} is outside 0..{len(self.class_names) - 1}")
            self.lut[raw % 256] = train
            self.known[raw % 256] = True

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.class_names))

    def unknown_ids(self, raw: np.ndarray) -> list[int]:
        """Raw ids present in `raw` that the map does not know (sorted)."""
        present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
        return [int(i) for i in present if not self.known[i]]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        return self.lut[raw]


def cityscapes_label_map() -> LabelMap:
    return LabelMap(CITYSCAPES_LABEL_TO_TRAIN_ID, CITYSCAPES_CLASSES)


def gtav_label_map() -> LabelMap:
    return LabelMap({raw: i for i, raw in enumerate(GTAV_EVAL_IDS)}, CITYSCAPES_CLASSES, accept_all=True)


def train_id_label_map() -> LabelMap:
    """Identity on 0..18 plus 255: files that already hold train ids (BDD100K masks, *labelTrainIds)."""
    return LabelMap({**{i: i for i in range(19)}, IGNORE_INDEX: IGNORE_INDEX}, CITYSCAPES_CLASSES)


def mapillary_label_map() -> LabelMap:
    index = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}
    mapping = {i: index.get(MAPILLARY_TO_CITYSCAPES.get(n, ""), IGNORE_INDEX) for i, n in enumerate(MAPILLARY_CLASSES)}
    return LabelMap(mapping, CITYSCAPES_CLASSES)


def camvid_label_map(label_space: str = "camvid") -> LabelMap:
    """CamVid's map: its own 11 classes (`"camvid"`) or the 19 Cityscapes ones (`"cityscapes"`)."""
    if label_space == "camvid":
        return LabelMap({**{i: i for i in range(11)}, CAMVID_VOID_ID: IGNORE_INDEX}, CAMVID_CLASSES)
    if label_space == "cityscapes":
        return LabelMap({**dict(enumerate(CAMVID_TO_CITYSCAPES)), CAMVID_VOID_ID: IGNORE_INDEX}, CITYSCAPES_CLASSES)
    raise ValueError(f"label_space must be 'camvid' or 'cityscapes', got {label_space!r}")


def name_mapping_lut(id2label: dict[int, str], target_id2label: dict[int, str], mapping: dict[str, str]):
    """A 256-entry LUT from a dataset's ids (`id2label`) to a model's (`target_id2label`), matching class names.

    Each class goes to the model class of the same name, or of `mapping[name]` (e.g. CamVid's `"tree"` ->
    Cityscapes' `"vegetation"`); a class that matches none is ignored (255). Returns `(lut, unmatched names)`.
    """
    index = {name: int(k) for k, name in target_id2label.items()}
    unknown = sorted(set(mapping.values()) - set(index))
    if unknown:
        raise ValueError(f"label mapping targets {unknown} are not classes of the model ({sorted(index)}).")
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    unmatched = []
    for i, name in id2label.items():
        target = index.get(mapping.get(name, name))
        if target is None:
            unmatched.append(name)
        else:
            lut[i] = target
    return lut, unmatched
