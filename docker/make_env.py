"""Writes the compose platform's .env from .env.example, with fresh random secrets.

Every `KEY=` line with an empty value in the example is a required secret (docker-compose.yaml
refuses to start without it); this fills each with a new random value and copies every other
line as it is. An existing .env is never overwritten: it holds the secrets the databases were
initialised with, and replacing them would lock the platform out of its own data.

    python3 docker/make_env.py                 # writes ./.env
    python3 docker/make_env.py --output PATH   # somewhere else

Standard library only, so it runs with any Python 3.9+ on the Docker host.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Callable

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = PROJECT_ROOT / ".env.example"

_ASSIGNMENT = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def _hex_secret() -> str:
    # Hex only: the value may land in a URL (the Airflow database connection) unescaped.
    return secrets.token_hex(24)


def _fernet_key() -> str:
    # The format of cryptography.fernet.Fernet.generate_key(), without needing that package.
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


SECRET_GENERATORS: dict[str, Callable[[], str]] = {"AIRFLOW_FERNET_KEY": _fernet_key}


class EnvFileError(RuntimeError):
    """The .env cannot be written without losing data, or the example is unusable."""


def required_secrets(example_text: str) -> list[str]:
    """The keys that the example leaves empty: the secrets an operator must provide."""
    keys = []
    for line in example_text.splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match and not match["value"].strip():
            keys.append(match["key"])
    return keys


def render_env(example_text: str) -> tuple[str, dict[str, str]]:
    """Returns the example with each empty secret filled in, and the generated values."""
    generated: dict[str, str] = {}
    lines = []
    for line in example_text.splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match and not match["value"].strip():
            key = match["key"]
            generated[key] = SECRET_GENERATORS.get(key, _hex_secret)()
            line = f"{key}={generated[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n", generated


def make_env(example: Path = EXAMPLE, output: Path = PROJECT_ROOT / ".env") -> dict[str, str]:
    """Writes `output` (mode 0600, atomically) and returns the generated secrets."""
    if output.exists():
        raise EnvFileError(
            f"{output} already exists and holds the secrets the platform was set up with; "
            "not overwriting it. Edit it by hand, or move it away first if you really want new secrets."
        )
    try:
        example_text = example.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise EnvFileError(f"{example} not found: run this from a checkout of mlops-suite") from err
    text, generated = render_env(example_text)
    if not generated:
        raise EnvFileError(f"{example} has no empty KEY= lines: nothing to generate")
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o600)
        # link() fails if `output` appeared meanwhile, where a rename would silently replace it.
        os.link(temp_name, output)
    except FileExistsError as err:
        raise EnvFileError(f"{output} appeared while writing it; not overwriting it") from err
    finally:
        Path(temp_name).unlink(missing_ok=True)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="template (default: .env.example)")
    parser.add_argument("--output", type=Path, default=PROJECT_ROOT / ".env", help="file to write (default: .env)")
    args = parser.parse_args(argv)
    try:
        generated = make_env(args.example, args.output)
    except EnvFileError as err:
        print(f"make_env: {err}", file=sys.stderr)
        return 1
    print(f"make_env: wrote {args.output} with new values for {', '.join(generated)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
