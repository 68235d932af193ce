"""One line naming the versions a CI run installed, so a failure that follows a release names its cause."""

from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "python",
    "torch",
    "torchvision",
    "torchattacks",
    "kornia",
    "numpy",
    "click",
    "safetensors",
    "torchmetrics",
    "timm",
    "mypy",
    "ruff",
    "pytest",
    "pyautoattack",
)


def _version(name: str) -> str:
    if name == "python":
        import platform

        return platform.python_version()
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


print("versions: " + ", ".join(f"{name} {_version(name)}" for name in PACKAGES))
