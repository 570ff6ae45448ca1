"""Optional dependencies: import one, or fail with the pip extra that installs it.

The one place that knows how a missing extra is reported. Features import their optional
modules through `require` (serve: aiohttp; bench: aiohttp, matplotlib; store: redis), so the
CLI prints one line naming the extra and exits 2 instead of showing an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trtkv.errors import MissingExtraError


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for the feature ``what`` (e.g. ``"trtkv serve"``).

    Args:
        module: the dotted module name to import, e.g. ``"aiohttp"``.
        extra: the trtkv extra that installs it, e.g. ``"serve"``.
        what: the feature that needs it, as the user names it.

    Returns:
        The imported module.

    Raises:
        MissingExtraError: the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra: pip install 'trtkv[{extra}]'") from exc
