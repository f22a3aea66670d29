"""Consistency models, one module each, one interface (emu/models/base.py)."""
from importlib import import_module

#: model name -> (module, class)
MODELS = {
    "immediate": ("immediate", "Immediate"),
    "stop_machine": ("stop_machine", "StopMachine"),
    "ksplice": ("stop_machine", "Ksplice"),
    "kgraft": ("kgraft", "KGraft"),
    "livepatch": ("livepatch", "Livepatch"),
}


def model_class(name: str):
    """The class of a model by name; ValueError listing the names if unknown."""
    try:
        module, cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}' (one of: {', '.join(MODELS)})") from None
    return getattr(import_module(f"{__name__}.{module}"), cls)


def make_model(name: str, machine, **options):
    return model_class(name)(machine, **options)
