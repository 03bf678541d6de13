"""The relay's hot modules, compiled with mypyc, and the pure-Python fallback.

``scripts/bootstrap`` runs ``scripts/build-native`` (:func:`build`: mypy's
mypyc and a C compiler): each module in :data:`MODULES` gets an extension beside
its source (``core.cpython-311-x86_64-linux-gnu.so``), and the code they
share goes in one library at the top of ``src``. Python imports an
extension before a source of the same name, so a node runs the compiled
code with nothing else to do. The sources stay the reference: the compiled
modules are the same code, with the annotations checked at run time.

The compiled modules call each other's classes directly, so they are used
all together or not at all. :func:`choose` (run when the package is first
imported) imports the sources instead when ``CLUSTERCHAT_PURE`` is set
(to ``1``), when nothing was built, or when any source in the package is
newer than the build: an edit is never hidden behind a stale build.
:data:`MODE` says which, and the node logs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

#: Compiled, in this order; together they are one mypyc group.
MODULES = (
    "clusterchat.protocol.framing",
    "clusterchat.protocol.codec",
    "clusterchat.server.outbox",
    "clusterchat.server.core",
)
#: The shared library's name: ``src/clusterchat_native__mypyc.*.so``.
GROUP = "clusterchat_native"
#: Set (to anything but ``0`` or empty) to run the sources even if built.
PURE_ENV = "CLUSTERCHAT_PURE"

_PACKAGE = Path(__file__).resolve().parent
_SRC = _PACKAGE.parent
_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so

#: "compiled", or "pure (why)"; set by :func:`choose`.
MODE = "pure (not chosen yet)"


def _source(name: str) -> Path:
    return _SRC.joinpath(*name.split(".")).with_suffix(".py")


def _extension(name: str) -> Path:
    return _SRC.joinpath(*name.split(".")).with_name(name.rsplit(".", 1)[1] + _SUFFIX)


def _newest_source() -> float:
    """The latest change to any source of the package (the compiled code
    relies on the others' types too)."""
    newest = 0.0
    for path in _PACKAGE.rglob("*.py"):
        newest = max(newest, path.stat().st_mtime)
    return newest


def _why_pure() -> str | None:
    """Why the sources must run, or None if the build can."""
    if os.environ.get(PURE_ENV, "0") not in ("", "0"):
        return f"{PURE_ENV} is set"
    try:
        built = [_extension(name).stat().st_mtime for name in MODULES]
        built.append((_SRC / (GROUP + "__mypyc" + _SUFFIX)).stat().st_mtime)
    except FileNotFoundError:
        return "not built: scripts/build-native"
    if min(built) < _newest_source():
        return "sources changed since the build: scripts/build-native"
    return None


class _Sources(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their sources."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def choose() -> None:
    """Decide, once, between the build and the sources (see the module's doc)."""
    global MODE
    if MODE != "pure (not chosen yet)":
        return
    why = _why_pure()
    if why is None:
        MODE = "compiled"
        return
    MODE = f"pure ({why})"
    if not any(isinstance(f, _Sources) for f in sys.meta_path):
        sys.meta_path.insert(0, _Sources())


def build() -> None:
    """Compile :data:`MODULES` in place (setuptools and mypyc's own build)."""
    from mypyc.build import mypycify  # only where it is built (mypy, a dev dependency)
    from setuptools import setup  # type: ignore[import-untyped]

    root = _SRC.parent
    os.chdir(root)  # mypy reads pyproject.toml's settings from here
    temp = root / "build" / "native"
    setup(
        name=GROUP,
        package_dir={"": "src"},
        ext_modules=mypycify(
            [str(_source(name).relative_to(root)) for name in MODULES],
            group_name=GROUP,
            target_dir=str(temp / "c"),
        ),
        script_args=["--quiet", "build_ext", "--inplace", "--build-temp", str(temp / "o")],
    )
    # Built from the sources as they are now, even where an unchanged module
    # was copied from an earlier build with its old time.
    for path in [*map(_extension, MODULES), _SRC / (GROUP + "__mypyc" + _SUFFIX)]:
        os.utime(path)
