"""Secrets kept in files: ``review.token_file``, and ``secret_file`` / ``headers_file`` of a ``webhook`` action.

Each ``X_file`` key is read when the config is loaded (at start and on every SIGHUP reload) and stands for ``X``,
so a plugin sees ``secret`` or ``headers`` as if written inline. This is how systemd credentials reach rfwatch:
``LoadCredential=webhook-secret:/etc/rfwatch/webhook-secret`` in the unit, ``secret_file:
${CREDENTIALS_DIRECTORY}/webhook-secret`` in the config (``${VAR}`` is expanded before the file is read).

- A token or secret file holds the value; one trailing newline (``echo`` adds one) is stripped, nothing else.
- A headers file holds HTTP header lines, ``Name: value``, one per line; blank lines and ``#`` lines are skipped.

Errors name the key and the file, never the file's content.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SecretFileError", "read_secret_file", "read_headers_file", "FILE_KEYS", "materialise"]


class SecretFileError(ValueError):
    """``str()`` starts with the key path and names the file."""


def _read(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretFileError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"{key}: {path} is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text


def read_secret_file(path: Path, key: str) -> str:
    value = _read(path, key)
    if not value.strip():
        raise SecretFileError(f"{key}: {path} is empty")
    return value


def read_headers_file(path: Path, key: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for n, line in enumerate(_read(path, key).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            # The line may be a secret: its number, never its text.
            raise SecretFileError(f"{key}: {path} line {n}: expected a header line such as 'Authorization: Bearer ...'")
        headers[name.strip()] = value.strip()
    return headers


#: ``X_file`` key -> (the key it stands for, its reader).
FILE_KEYS: dict[str, tuple[str, Callable[[Path, str], Any]]] = {
    "secret_file": ("secret", read_secret_file),
    "headers_file": ("headers", read_headers_file),
    "token_file": ("token", read_secret_file),
}


def materialise(options: dict[str, Any], key: str, resolve: Callable[[str], Path], unset: list[str] | None) -> None:
    """Replace each ``X_file`` of ``options`` by ``X`` read from the file, in place.

    With ``unset`` (reading for the journal only) an unreadable file is recorded there and its key dropped.
    """
    for file_key, (plain, reader) in FILE_KEYS.items():
        if file_key not in options:
            continue
        where = f"{key}.{file_key}"
        given = options.pop(file_key)
        if plain in options:
            raise SecretFileError(f"{where}: give {plain} or {file_key}, not both")
        if not isinstance(given, str) or not given.strip():
            raise SecretFileError(f"{where}: expected the path of a file, got a {type(given).__name__}")
        try:
            options[plain] = reader(resolve(os.path.expanduser(given)), where)
        except SecretFileError as exc:
            if unset is None:
                raise
            unset.append(str(exc))
