"""Finds the templates and migrations that ship inside the package."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resource_path(name: str) -> Path:
    """The directory `templates` or `migrations`: inside the installed package, else the source tree."""
    installed = _PACKAGE_DIR / name
    if installed.is_dir():
        return installed
    return _PACKAGE_DIR.parent / name


def template_search_path(override_dir: str = "") -> list[Path]:
    """Where page templates are looked up: the operator's directory first (`[web] templates_dir`), then ours."""
    shipped = resource_path("templates")
    return [Path(override_dir), shipped] if override_dir else [shipped]
