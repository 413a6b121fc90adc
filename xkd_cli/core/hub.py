"""Whether the Hugging Face Hub can be reached, decided once per process before the first hub download.

Unreachable, the hub libraries would retry each file five times with back-off (about 30 s of "Retrying in Ns"
warnings) before failing; reachable, those retries are worth keeping. So a quick TCP connection to the hub (or
to the HTTPS proxy, where one is set) decides: when it fails, offline mode is switched on, the libraries use
their cache only, and a missing file fails at once. HF_HUB_OFFLINE=1 set by the user skips the check."""

from __future__ import annotations

import functools
import os
import socket
import sys
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "on", "yes", "true")


def _target() -> tuple[str, int, str]:
    """The host and port a hub request connects to first (the proxy, if any), and how to name it."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") if endpoint.startswith("https") else \
        os.environ.get("HTTP_PROXY") or os.environ.get("http_proxy")
    url = urlsplit(proxy or endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.hostname or "", port, (f"the proxy {url.hostname}:{port}" if proxy else endpoint)


@functools.cache
def hub_unreachable() -> str | None:
    """None when the hub can be reached (or offline mode was asked for); else why not, in a few words. When it
    cannot be reached, offline mode is switched on for the rest of the process."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return None
    host, port, name = _target()
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        return None
    except OSError as exc:
        reason = f"{name} cannot be reached ({exc.strerror or type(exc).__name__})"
    os.environ["HF_HUB_OFFLINE"] = "1"  # for the hub libraries not imported yet
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")  # and for those already imported
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True
    return reason


def hub_offline() -> str | None:
    """Why nothing can be downloaded from the hub now (offline mode asked for, or the hub unreachable), else None."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE:
        return "offline mode is on (HF_HUB_OFFLINE)"
    return hub_unreachable()
