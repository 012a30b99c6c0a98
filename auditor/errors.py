"""The two ways a run goes wrong before any finding: the user asked for something impossible, or a target broke."""

from __future__ import annotations


class UsageError(Exception):
    """Bad options, config or input specs: the whole run stops with exit 2."""


class TargetError(Exception):
    """One target could not be loaded, built or captured: it gets status "error" and the others still run.

    The message is one line that says what failed and where (file:line when there is one).
    """


def first_line(exc: BaseException) -> str:
    """An exception as one line of text: its message's first line, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MissingPackage(ModuleNotFoundError):
    """Raised when the user's code uses a package that is not installed and that its file was imported without
    (`auditor.loading.placeholders`): the model needs it, so it is not audited here."""

    def __init__(self, package: str) -> None:
        super().__init__(f"needs {package}, which is not installed (`pip install {pip_name(package)}`)", name=package)
        self.package = package


def missing_package(exc: BaseException | None) -> MissingPackage | None:
    """The MissingPackage behind a failure, if that is what it was."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MissingPackage):
            return exc
        exc, seen = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None), seen + 1
    return None


_PIP_NAMES = {"sklearn": "scikit-learn", "cv2": "opencv-python", "PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image",
              "bs4": "beautifulsoup4", "attr": "attrs", "dateutil": "python-dateutil", "Crypto": "pycryptodome", "git": "gitpython",
              "google": "protobuf", "tensorflow_datasets": "tensorflow-datasets", "gym": "gym", "mpl_toolkits": "matplotlib"}


def pip_name(package: str) -> str:
    """What `pip install` calls the distribution that provides an importable package."""
    return _PIP_NAMES.get(package, package.replace("_", "-"))
