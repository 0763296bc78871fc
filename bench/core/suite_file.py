"""Reading a suite file: untrusted TOML, every failure a ConfigError naming the file."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bench.core.config import ConfigError

DEFAULT_SUITES = Path(__file__).parent.parent / "suites.toml"


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"suite file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"suite file {path} is a folder; --config takes a TOML file") from None
    except UnicodeDecodeError as err:  # TOML is UTF-8 by definition
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except OSError as err:  # unreadable: permissions, a device, an I/O error
        raise ConfigError(f"suite file {path} cannot be read: {err.strerror or err}") from None


def suite_names(doc: dict[str, Any]) -> list[str]:
    return sorted(doc.get("suites", {}))
