"""Version strings: our product version and the devpi-server feature level we emulate (spec/cli.md §1.1)."""
from __future__ import annotations

# The package version (pyproject.toml reads it from here).
DEVPITX_VERSION = "0.1.0"

# devpi-client's tests read the last line of --version as the devpi-server release
# whose behaviour the server offers; the same string goes into X-Devpi-Server-Version.
DEVPI_SERVER_COMPAT_VERSION = "6.19.1"
HTTP_API_VERSION = "2"
