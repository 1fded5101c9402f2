"""FisherTune through PEFT's own generic tuner test matrix (``tests/test_custom_models.py`` of peft).

How the matrix is wired
-----------------------
``conftest.py`` extracts PEFT's ``test_custom_models.py`` and the modules it imports
(``testing_common.py``, ``testing_utils.py``) from the sdist of the installed peft into
``_peft_tests/`` (gitignored); they are imported here as a package, unmodified.

PEFT's matrix classes are ``TestPeftCustomModel`` (a ``PeftCommonTester``),
``TestMultipleActiveAdapters``, ``TestPeftFsdpStateDict`` and ``TestMixedAdapterBatches`` (per-sample
``adapter_names``). Each gets a FisherTune subclass below in
which every test that PEFT parametrizes over one of its method-agnostic case lists (``TEST_CASES``,
``ALL_PEFT_CONFIG_CLASSES``, ``MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES``, ``MIXED_ADAPTER_TEST_CASES``; plus the
six generic tests in
``_PER_METHOD_LISTS`` that carry an inline list of methods) is re-declared with PEFT's own function
body and marks, that case list swapped for the FisherTune rows below (same row format). PEFT tests
that hard-code another method's config (LoRA/DoRA, IA3, trainable tokens, PVeRA, GPT-2/BERT from
the Hub, ...) are removed from the subclasses, so only FisherTune rows run. PEFT's other classes in
that file are per-method (``TestRequiresGrad``, ``TestLayerRepr``, ``TestMultiRankAdapter``,
``TestDynamicDispatch``, ``TestDefaultTargetModules``) and are not wired.

A matrix test that cannot apply to FisherTune would be skipped with its reason in
``NOT_APPLICABLE``, the only skip list of this module; it names one LoRA-conversion test. The
skips in a run come from PEFT's own guards inside the tests (no ``bias`` option, LoRA/BOFT-only bias
warnings, several active adapters with ``modules_to_save``), as for any PEFT method. If a future
peft drops a case list or a named test, importing this module fails instead of silently shrinking
the matrix.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from functools import partial
from pathlib import Path

import pytest
from _pytest.fixtures import FixtureFunctionDefinition

from fishertune import FisherTuneConfig

_PEFT_TESTS_DIR = Path(__file__).resolve().parent / "_peft_tests"
_PKG = "_fishertune_peft_tests"


@contextlib.contextmanager
def _stub_missing_diffusers():
    """``testing_common`` imports ``diffusers.StableDiffusionPipeline`` at module level for its Stable Diffusion
    tester, which this matrix never uses; diffusers is not a dependency of fishertune. Provide a placeholder only
    for the duration of the import, so nothing else in the session ever sees a fake ``diffusers``."""
    if importlib.util.find_spec("diffusers") is not None:
        yield
        return

    class StableDiffusionPipeline:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("diffusers is not installed; the FisherTune matrix does not run Stable Diffusion tests")

        from_pretrained = classmethod(__init__)

    stub = types.ModuleType("diffusers")
    stub.StableDiffusionPipeline = StableDiffusionPipeline
    sys.modules["diffusers"] = stub
    try:
        yield
    finally:
        sys.modules.pop("diffusers", None)


def _import_peft_tests():
    if not (_PEFT_TESTS_DIR / "test_custom_models.py").is_file():
        raise RuntimeError(f"{_PEFT_TESTS_DIR} is missing: run tests/peft_matrix/fetch_peft_tests.py")
    if _PKG not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            _PKG, _PEFT_TESTS_DIR / "__init__.py", submodule_search_locations=[str(_PEFT_TESTS_DIR)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[_PKG] = package
        spec.loader.exec_module(package)
    with _stub_missing_diffusers():
        return importlib.import_module(f"{_PKG}.test_custom_models")


peft_tcm = _import_peft_tests()

# Module-level fixtures of PEFT's test module (e.g. `fsdp_process_group`, used by TestPeftFsdpStateDict) are seen by
# pytest only in the module that defines the test class; the subclasses below live here, so they are re-exported.
for _name, _obj in vars(peft_tcm).items():
    if isinstance(_obj, FixtureFunctionDefinition):
        globals().setdefault(_name, _obj)

# ---------------------------------------------------------------------------------------------------------------
# FisherTune cases, in the format of PEFT's TEST_CASES: (test name, model id, config class, config kwargs).
# Like every PEFT method, the rows use the default identity init (zero deltas); the tests that need a non-identity
# adapter flip it themselves with PEFT's `set_init_weights_false` (-> init_weights=False: random deltas).
# The generic tests cannot call `model.select(scores)`: the data-free selection at injection (`init_criterion`, by
# default "magnitude") gives them an adapter to train. The last rows are the plain default config (nothing but the
# targets) and the "random" criterion at the default budget.
# ---------------------------------------------------------------------------------------------------------------
_MAG = {"init_criterion": "magnitude", "delta_max": 0.3}

FISHERTUNE_TEST_CASES = [
    ("Vanilla MLP 1 FisherTune", "MLP", FisherTuneConfig, {"target_modules": "lin0", **_MAG}),
    ("Vanilla MLP 2 FisherTune", "MLP", FisherTuneConfig, {"target_modules": ["lin0"], **_MAG}),
    ("Vanilla MLP 3 FisherTune", "MLP", FisherTuneConfig, {"target_modules": ["lin1"], **_MAG}),
    # one global ranking over both layers (no per-layer quota)
    ("Vanilla MLP 4 FisherTune", "MLP", FisherTuneConfig, {"target_modules": ["lin0", "lin1"], **_MAG}),
    (
        "Vanilla MLP 5 FisherTune random criterion",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], "init_criterion": "random", "seed": 3, "delta_max": 0.3},
    ),
    (
        "Vanilla MLP 6 FisherTune paper budget",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], "init_criterion": "magnitude", "delta_max": 0.05, "delta_min": 0.01},
    ),
    (
        "Vanilla MLP 7 FisherTune all entries",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0"], "init_criterion": "magnitude", "delta_max": 1.0},
    ),
    (
        "Vanilla MLP 8 FisherTune modules_to_save",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0"], "modules_to_save": ["lin1"], **_MAG},
    ),
    (
        "Vanilla MLP 9 FisherTune exclude_modules",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], "exclude_modules": ["lin1"], **_MAG},
    ),
    (
        "Vanilla MLP 10 FisherTune regex + exclude regex",
        "MLP",
        FisherTuneConfig,
        {"target_modules": r"lin\d", "exclude_modules": r"lin0", **_MAG},
    ),
    (
        "MLP LayerNorm 1 FisherTune",
        "MLP_LayerNorm",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], "modules_to_save": ["layernorm0"], **_MAG},
    ),
    ("MLP2 1 FisherTune", "MLP2", FisherTuneConfig, {"target_modules": ["lin0", "lin1"], **_MAG}),
    ("Vanilla MLP 11 FisherTune default config", "MLP", FisherTuneConfig, {"target_modules": ["lin0", "lin1"]}),
    ("Vanilla MLP 12 FisherTune default config one layer", "MLP", FisherTuneConfig, {"target_modules": "lin0"}),
    (
        "Vanilla MLP 13 FisherTune random criterion default budget",
        "MLP",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], "init_criterion": "random"},
    ),
    ("MLP2 2 FisherTune default config", "MLP2", FisherTuneConfig, {"target_modules": ["lin0", "lin1"]}),
]

# Format of PEFT's MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES: (name, tuner method, config class, kwargs 1, kwargs 2).
_MAG_RANDOM_INIT = {**_MAG, "init_weights": False}
FISHERTUNE_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES = [
    (
        "FisherTune Same",
        "fishertune",
        FisherTuneConfig,
        {"target_modules": ["lin0"], **_MAG_RANDOM_INIT},
        {"target_modules": ["lin0"], **_MAG_RANDOM_INIT},
    ),
    (
        "FisherTune Different",
        "fishertune",
        FisherTuneConfig,
        {"target_modules": ["lin0"], **_MAG_RANDOM_INIT},
        {"target_modules": ["lin1"], **_MAG_RANDOM_INIT},
    ),
    (
        "FisherTune overlapping, different criteria",
        "fishertune",
        FisherTuneConfig,
        {"target_modules": ["lin0", "lin1"], **_MAG_RANDOM_INIT},
        {"target_modules": ["lin0"], "init_criterion": "random", "delta_max": 0.5, "init_weights": False},
    ),
    (
        "FisherTune default config",
        "fishertune",
        FisherTuneConfig,
        {"target_modules": ["lin0"], "init_weights": False},
        {"target_modules": ["lin1"], "init_weights": False},
    ),
]

# Format of PEFT's MIXED_ADAPTER_TEST_CASES (per-sample `adapter_names`): (name, config 0, config 1).
_RANDOM_DELTAS = {"init_weights": False, **_MAG}
FISHERTUNE_MIXED_ADAPTER_TEST_CASES = [
    (
        "FisherTune mixed adapter",
        FisherTuneConfig(target_modules=["lin0"], **_RANDOM_DELTAS),
        FisherTuneConfig(target_modules=["lin0"], init_criterion="random", init_weights=False, delta_max=0.5),
    ),
    (
        "FisherTune mixed adapter, two layers",
        FisherTuneConfig(target_modules=["lin0", "lin1"], **_RANDOM_DELTAS),
        FisherTuneConfig(target_modules=["lin0", "lin1"], **_RANDOM_DELTAS),
    ),
]

# Stand-ins for PEFT's ALL_PEFT_CONFIG_CLASSES: those tests build `config_cls(target_modules=...)` themselves.
# The bare class is FisherTune's default (magnitude selection at injection, 5% budget); the partials use the other
# init criterion and the deferred mode (nothing allocated until `select(scores)`).
FisherTuneMagnitudeConfig = partial(FisherTuneConfig, init_criterion="magnitude", delta_max=0.3)
FisherTuneRandomConfig = partial(FisherTuneConfig, init_criterion="random", delta_max=0.3)
FisherTuneDeferredConfig = partial(FisherTuneConfig, init_criterion=None)
FISHERTUNE_CONFIG_CLASSES = [
    pytest.param(FisherTuneConfig, id="FisherTuneConfig-default"),
    pytest.param(FisherTuneMagnitudeConfig, id="FisherTuneConfig-magnitude"),
    pytest.param(FisherTuneRandomConfig, id="FisherTuneConfig-random"),
    pytest.param(FisherTuneDeferredConfig, id="FisherTuneConfig-deferred"),
]

# PEFT's case lists -> FisherTune's (matched by identity, so only parametrizations over these lists are swapped).
_CASE_LISTS = {
    id(getattr(peft_tcm, peft_list)): (peft_list, ours)
    for peft_list, ours in [
        ("TEST_CASES", FISHERTUNE_TEST_CASES),
        ("ALL_PEFT_CONFIG_CLASSES", FISHERTUNE_CONFIG_CLASSES),
        ("MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES", FISHERTUNE_MULTIPLE_ACTIVE_ADAPTERS_TEST_CASES),
        ("MIXED_ADAPTER_TEST_CASES", FISHERTUNE_MIXED_ADAPTER_TEST_CASES),
    ]
}

# Generic tests that PEFT parametrizes over an inline list of the methods it checks ({test: {argname: values}}).
_PER_METHOD_LISTS = {
    "test_multiple_adapters_mixed_modules_to_save": {"config_cls": FISHERTUNE_CONFIG_CLASSES},
    "test_multiple_adapters_mixed_modules_to_save_order_switched": {"config_cls": FISHERTUNE_CONFIG_CLASSES},
    "test_mixed_adapter_batches_different_target_layers": {
        "test_name, config0, config1": [
            (
                "FisherTune, different layers",
                FisherTuneConfig(target_modules=["lin0"], **_RANDOM_DELTAS),
                FisherTuneConfig(target_modules=["lin1"], **_RANDOM_DELTAS),
            ),
        ]
    },
    "test_mixed_adapter_batches_partly_overlapping_target_layers": {
        "test_name, config0, config1": [
            (
                "FisherTune, overlapping layers",
                FisherTuneConfig(target_modules=["lin0"], **_RANDOM_DELTAS),
                FisherTuneConfig(target_modules=["lin0", "lin1"], **_RANDOM_DELTAS),
            ),
        ]
    },
    "test_mixed_adapter_batches_multiple_modules_to_save": {
        "test_name, config0, config1": [
            (
                "FisherTune, modules_to_save",
                FisherTuneConfig(target_modules=["lin0"], modules_to_save=["lin1"], **_RANDOM_DELTAS),
                FisherTuneConfig(target_modules=["lin0"], modules_to_save=["lin1"], **_RANDOM_DELTAS),
            ),
        ]
    },
    "test_adapter_name_makes_no_difference": {
        "config0": [FisherTuneConfig(target_modules=["lin0"], init_weights=False, **_MAG)]
    },
}

# ---------------------------------------------------------------------------------------------------------------
# The only skip list: {matrix test: why it cannot apply to FisherTune}. Empty: FisherTune passes every wired test.
# (FisherTune wraps nn.Linear only, so the rows target no conv/embedding/MHA layer; none of PEFT's generic tests
# needs one.)
# ---------------------------------------------------------------------------------------------------------------
NOT_APPLICABLE: dict[str, str] = {
    # The LoRA-conversion API; FisherTune's supports_lora_conversion() is False. (The test also looks its config
    # class up in PEFT's own TEST_CASES, which hold no FisherTune row.)
    "test_get_additive_delta_uses_adapter_dtype": "get_additive_delta serves LoRA conversion, which FisherTune "
    "does not support",
}


_used: set[str] = (
    set()
)  # which swaps and skips took effect (checked below, so that a new peft cannot shrink the matrix)


def _retarget(base: type, name: str) -> type:
    """A subclass of PEFT's test class ``base`` whose matrix tests run the FisherTune cases only."""
    namespace = {"__module__": __name__, "__qualname__": name, "__doc__": f"PEFT's {base.__name__}, FisherTune cases."}
    for attr in dir(base):
        func = getattr(base, attr)
        if not attr.startswith("test_") or not callable(func):
            continue
        marks, swapped = [], False
        for mark in getattr(func, "pytestmark", []):
            if mark.name == "parametrize":
                argnames, argvalues = mark.args[0], mark.args[1]
                peft_list, new_values = _CASE_LISTS.get(id(argvalues), (None, None))
                if new_values is not None:
                    _used.add(f"list:{peft_list}")
                else:
                    new_values = _PER_METHOD_LISTS.get(attr, {}).get(argnames)
                    if new_values is not None:
                        _used.add(f"method:{attr}")
                if new_values is not None:
                    mark = pytest.mark.parametrize(argnames, new_values, **mark.kwargs).mark
                    swapped = True
            marks.append(mark)
        if not swapped:
            namespace[attr] = None  # written for other PEFT methods only: not part of the matrix
            continue
        if attr in NOT_APPLICABLE:
            _used.add(f"skip:{attr}")
            marks.append(pytest.mark.skip(reason=f"not applicable to FisherTune: {NOT_APPLICABLE[attr]}").mark)
        # Same code, globals and closure as PEFT's test; only the marks differ.
        clone = types.FunctionType(func.__code__, func.__globals__, attr, func.__defaults__, func.__closure__)
        clone.__dict__.update({k: v for k, v in func.__dict__.items() if k != "pytestmark"})
        clone.__qualname__ = f"{name}.{attr}"
        clone.pytestmark = marks
        namespace[attr] = clone
    return type(name, (base,), namespace)


TestFisherTuneCustomModel = _retarget(peft_tcm.TestPeftCustomModel, "TestFisherTuneCustomModel")
TestFisherTuneMultipleActiveAdapters = _retarget(
    peft_tcm.TestMultipleActiveAdapters, "TestFisherTuneMultipleActiveAdapters"
)
TestFisherTunePeftFsdpStateDict = _retarget(peft_tcm.TestPeftFsdpStateDict, "TestFisherTunePeftFsdpStateDict")
TestFisherTuneMixedAdapterBatches = _retarget(peft_tcm.TestMixedAdapterBatches, "TestFisherTuneMixedAdapterBatches")

_unused = (
    [peft_list for peft_list, _ in _CASE_LISTS.values() if f"list:{peft_list}" not in _used]
    + [f"_PER_METHOD_LISTS[{m!r}]" for m in _PER_METHOD_LISTS if f"method:{m}" not in _used]
    + [f"NOT_APPLICABLE[{m!r}]" for m in NOT_APPLICABLE if f"skip:{m}" not in _used]
)
if _unused:
    raise RuntimeError(
        f"The peft {(_PEFT_TESTS_DIR / 'PEFT_VERSION').read_text().strip()} test matrix has no test parametrized "
        f"by or named in: {_unused}. Update the FisherTune wiring in {Path(__file__).name} for this peft version."
    )
