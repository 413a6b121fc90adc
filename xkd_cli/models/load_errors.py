"""Why a model or tokenizer could not be loaded, in one line that names the fix."""

from __future__ import annotations

from xkd_cli.core.errors import XKDError


def remote_code_error(ref: str, exc: BaseException) -> XKDError:
    """A model or tokenizer that needs its own Python code, which xkd runs only when asked."""
    return XKDError(f"{ref!r} needs custom code shipped with the model (auto_map) to load, and xkd does not run "
                    "a model's own code unless asked: review that code, then pass --trust-remote-code "
                    "(or pick a model transformers supports natively)")


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'could not reach or find the files', whatever HTTP client is used."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError  # here: older huggingface_hub versions lack it

        errors.append(HfHubHTTPError)
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def short_error(exc: BaseException) -> str:
    """First line of an exception message, so XKDError stays one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

