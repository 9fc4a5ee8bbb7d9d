# Loaded by twistd's plugin scan: keep it tiny and import nothing from devpitx here.
from twisted.application.service import ServiceMaker

devpitx = ServiceMaker(
    "devpitx",
    "devpitx.cli.tap",
    "Private Python package index and PyPI mirror, wire-compatible with devpi-server.",
    "devpitx",
)
