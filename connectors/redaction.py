"""Secrets out of reprs and log lines: URL passwords, secret query options, settings objects.

Plain standard library and no imports from the project, so any module (``jobs``,
``connectors``, ``udfs``) can use it. :func:`redact_url` never raises, whatever the text.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Final

REDACTED: Final = "***"
# Query options whose value is a secret (case-insensitive): redis `password=`, tokens, keys.
SECRET_OPTIONS: Final[frozenset[str]] = frozenset(
    {
        "password",
        "pass",
        "passwd",
        "pwd",
        "secret",
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "auth",
        "signature",
        "sig",
    }
)
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_OPTION_RE: Final = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo and the values of secret options as ``***``.

    ``clickhouse://app:s3cret@db:9000/crypto_kline`` -> ``clickhouse://app:***@db:9000/...``,
    ``redis://db:6379/0?password=x`` -> ``redis://db:6379/0?password=***``. The user name is
    kept (it tells which account). A password that contains ``@``, ``/`` or ``?`` unescaped is
    still hidden whole: the userinfo runs to the last ``@`` of the text. Text that is not a
    URL comes back unchanged, except for secret options (and ``user:password@host`` without
    a scheme, which is treated as a URL's authority).
    """
    if not isinstance(url, str):
        return REDACTED
    text = url
    scheme = _SCHEME_RE.match(text)
    start = scheme.end() if scheme is not None else 0
    if "@" in text:
        at = text.rfind("@", start)
        if at > start and not text.startswith("/", start):
            userinfo = text[start:at]
            colon = userinfo.find(":")
            if colon >= 0:
                text = f"{text[:start]}{userinfo[:colon]}:{REDACTED}{text[at:]}"
    return _OPTION_RE.sub(_redact_option, text)


def _redact_option(match: re.Match[str]) -> str:
    separator, name, value = match.group(1), match.group(2), match.group(3)
    if name.strip().lower() in SECRET_OPTIONS and value:
        value = REDACTED
    return f"{separator}{name}={value}"


def _redacted_value(value: Any) -> str:
    if isinstance(value, str):
        return repr(redact_url(value)) if ("://" in value or "=" in value) else repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return redacted_repr(value)
    if isinstance(value, tuple | list) and any(isinstance(item, str) for item in value):
        inner = ", ".join(_redacted_value(item) for item in value)
        if isinstance(value, tuple):
            return f"({inner},)" if len(value) == 1 else f"({inner})"
        return f"[{inner}]"
    return repr(value)


def redacted_repr(obj: Any) -> str:
    """A dataclass's ``repr`` with every URL-like string passed through :func:`redact_url`.

    Fields declared ``field(repr=False)`` stay out, as in the generated ``repr``; nested
    dataclasses are shown the same way (so a password never leaks through a nested one).
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return repr(obj)
    shown = ", ".join(
        f"{f.name}={_redacted_value(getattr(obj, f.name))}"
        for f in dataclasses.fields(obj)
        if f.repr
    )
    return f"{type(obj).__name__}({shown})"
