"""The consistency models, one module (or package) each, one interface
(emu/models/base.py), and the one list of their names.

Every place that names models takes them from here: scenario validation
and the CLI's choices (MODEL_NAMES), the default of a scenario's [fuzz]
models, the demo's table and the bench (DEFAULT_MODELS).
"""
from importlib import import_module

#: model name -> (module, class)
MODELS = {
    "immediate": ("immediate", "Immediate"),
    "stop_machine": ("stop_machine", "StopMachine"),
    "ksplice": ("stop_machine", "Ksplice"),
    "kgraft": ("kgraft", "KGraft"),
    "livepatch": ("livepatch", "Livepatch"),
}

#: Every model's name, in the order tables list them.
MODEL_NAMES = tuple(MODELS)

#: The models compared when nobody says which: one of each family (Ksplice
#: is kpatch's stop_machine with a stack scan).
DEFAULT_MODELS = ("immediate", "stop_machine", "kgraft", "livepatch")


def model_class(name: str):
    """The class of a model by name; ValueError listing the names if unknown."""
    try:
        module, cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}' (one of: {', '.join(MODELS)})") from None
    return getattr(import_module(f"{__name__}.{module}"), cls)


def make_model(name: str, machine, **options):
    """A model by name on machine (ValueError as model_class)."""
    return model_class(name)(machine, **options)
