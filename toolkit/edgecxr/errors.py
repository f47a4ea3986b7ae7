"""The project's own error types.

Every error the user can cause (bad data, a wrong model file, a missing extra) is raised as one of
these with a one-line message that names the fix; ``edgecxr.cli`` turns them into a clean message
and exit code 1 instead of a traceback.
"""


class EdgeCXRError(Exception):
    """Base class: a user-facing problem with a one-line message."""


class DataError(EdgeCXRError):
    """The data set (folder, manifest, split file) cannot be used as given."""


class ImageError(EdgeCXRError):
    """One image file cannot be read; callers report it and skip the file."""


class LeakageError(DataError):
    """A split puts one patient in two splits."""


class ModelFileError(EdgeCXRError):
    """A model file or run directory is missing, corrupt or not an edgecxr model."""


class WeightsError(EdgeCXRError):
    """Backbone weights could not be loaded (offline ImageNet download, bad file)."""


class GuardError(EdgeCXRError):
    """An exported model lost more accuracy than allowed."""


class MissingExtraError(EdgeCXRError):
    """An optional dependency is missing; the message names the extra to install."""


class OutputExistsError(EdgeCXRError):
    """The output already exists and --force was not given."""


# Importing any of these imports TensorFlow, whose C++ start-up chatter edgecxr.quiet filters.
_TENSORFLOW_MODULES = ("tensorflow", "tf_keras", "tensorflow_model_optimization")


def require(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        if module in _TENSORFLOW_MODULES:
            from .quiet import import_tensorflow

            import_tensorflow()
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is not installed ({exc}); install it with: pip install 'edgecxr[{extra}]'"
        ) from None
