"""Version strings: our product version and the devpi-server feature level we emulate (spec/cli.md §1.1)."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# devpi-client's tests read the last line of --version as the devpi-server release
# whose behaviour the server offers; the same string goes into X-Devpi-Server-Version.
DEVPI_SERVER_COMPAT_VERSION = "6.19.1"
HTTP_API_VERSION = "2"

try:
    DEVPITX_VERSION = version("devpitx")
except PackageNotFoundError:  # running from a checkout without installation
    DEVPITX_VERSION = "0+unknown"
