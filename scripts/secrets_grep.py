"""Greps every log, report and data file a run left for the secrets it ran with (issue 16, section 4).

    python3 scripts/secrets_grep.py [--root DIR] [--also FILE ...] [--secret NAME=VALUE ...]

The secrets are read from where this project keeps them, under --root (a checkout; default this
one): the gateway admin token (`var/run/gateway_admin_token`), the Airflow logins
(`airflow_home/simple_auth_manager_passwords.json.generated`), Airflow's own keys and database
password (`airflow_home/airflow.cfg`: fernet_key, jwt_secret, secret_key, sql_alchemy_conn),
the ML Metadata database password (`mlops.toml` [metadata] password), the compose platform's
`.env` (every *PASSWORD*, *TOKEN*, *SECRET*, *KEY* value) and MLOPS_GATEWAY_ADMIN_TOKEN from the
environment; --secret adds more. Each is looked for as written and URL-encoded (database URLs).

What is searched: every file under `var/` and `airflow_home/` (logs, reports, request logs,
pipeline outputs, SQLite databases, byte for byte), and each --also file (e.g. a saved `make run`
output), except the files that hold the secrets. A hit prints the secret's name and where it is,
never the value. Exit status: 0 nothing found, 1 a secret was found, 2 no secret to look for (a
grep that cannot find anything proves nothing). Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import json
import os
import re
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Iterable, Iterator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIN_LENGTH = 8  # shorter values would match by chance (and are not secrets worth the name)
CHUNK = 1 << 20
NEWLINE = b"\n"
SECRET_ENV_KEY = re.compile(r"PASSWORD|TOKEN|SECRET|FERNET|_KEY$")
# Where each secret is kept: never reported as a leak of itself.
TOKEN_FILE = Path("var/run/gateway_admin_token")
AIRFLOW_HOME = Path("airflow_home")
PASSWORD_FILE = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
AIRFLOW_CFG = AIRFLOW_HOME / "airflow.cfg"
SEARCHED = (Path("var"), AIRFLOW_HOME)
AIRFLOW_KEYS = (("core", "fernet_key"), ("api_auth", "jwt_secret"), ("api", "secret_key"))


@dataclasses.dataclass(frozen=True)
class Secret:
    name: str  # what it is, printed instead of the value
    value: str
    source: Path | None  # the file that keeps it (not searched), None for the environment or --secret


@dataclasses.dataclass(frozen=True)
class Hit:
    secret: str
    path: Path
    where: str  # "line N" in text, "byte N" in binary files

    def __str__(self) -> str:
        return f"{self.secret} found in {self.path} ({self.where})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def known_secrets(root: Path, environ: dict[str, str] | None = None) -> list[Secret]:
    """Every secret this checkout's run may have used, from where the project keeps them."""
    environ = dict(os.environ if environ is None else environ)
    found: list[Secret] = []
    if (token := _read(root / TOKEN_FILE)) is not None:
        found.append(Secret("the gateway admin token", token.strip(), root / TOKEN_FILE))
    if (passwords := _read(root / PASSWORD_FILE)) is not None:
        try:
            logins = json.loads(passwords)
        except ValueError:
            logins = {}
        found += [Secret(f"the Airflow password of {user!r}", str(value), root / PASSWORD_FILE) for user, value in logins.items()]
    if (cfg := _read(root / AIRFLOW_CFG)) is not None:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read_string(cfg)
        for section, key in AIRFLOW_KEYS:
            found.append(Secret(f"Airflow's [{section}] {key}", parser.get(section, key, fallback=""), root / AIRFLOW_CFG))
        url = urllib.parse.urlsplit(parser.get("database", "sql_alchemy_conn", fallback=""))
        found.append(Secret("Airflow's database password", urllib.parse.unquote(url.password or ""), root / AIRFLOW_CFG))
    if (toml := _read(root / "mlops.toml")) is not None:
        try:
            password = tomllib.loads(toml).get("metadata", {}).get("password", "")
        except tomllib.TOMLDecodeError:
            password = ""
        found.append(Secret("the ML Metadata database password", str(password), root / "mlops.toml"))
    for line in (_read(root / ".env") or "").splitlines():
        key, _, value = line.strip().partition("=")
        if not key.startswith("#") and SECRET_ENV_KEY.search(key):
            found.append(Secret(f".env {key}", value.strip().strip("'\""), root / ".env"))
    if environ.get("MLOPS_GATEWAY_ADMIN_TOKEN"):
        found.append(Secret("MLOPS_GATEWAY_ADMIN_TOKEN", environ["MLOPS_GATEWAY_ADMIN_TOKEN"], None))
    return [s for s in found if s.value]


def _needles(secret: Secret) -> set[bytes]:
    return {secret.value.encode(), urllib.parse.quote(secret.value, safe="").encode()}


def _scan_file(path: Path, secrets: list[Secret]) -> Iterator[Hit]:
    needles = [(s.name, needle) for s in secrets for needle in _needles(s)]
    overlap = max(len(n) for _, n in needles) - 1
    reported: set[str] = set()
    try:
        handle = path.open("rb")
    except (PermissionError, FileNotFoundError, IsADirectoryError, OSError):
        return
    with handle:
        offset, lines, tail = 0, 0, b""
        while chunk := handle.read(CHUNK):
            data = tail + chunk
            start = offset - len(tail)
            for name, needle in needles:
                at = data.find(needle)
                if at >= 0 and name not in reported:
                    reported.add(name)
                    binary = b"\0" in data[:8192]
                    line = lines + data.count(NEWLINE, 0, at) - tail.count(NEWLINE) + 1
                    where = f"byte {start + at}" if binary else f"line {line}"
                    yield Hit(name, path, where)
            lines += chunk.count(b"\n")
            offset += len(chunk)
            tail = data[-overlap:] if overlap > 0 else b""


def searched_files(root: Path, also: Iterable[Path], secrets: list[Secret]) -> Iterator[Path]:
    stores = {s.source.resolve() for s in secrets if s.source is not None}
    for top in SEARCHED:
        for path in sorted((root / top).rglob("*")):
            if path.is_file() and not path.is_symlink() and path.resolve() not in stores:
                yield path
    yield from also


def grep(root: Path, also: Iterable[Path] = (), extra: Iterable[Secret] = (),
         environ: dict[str, str] | None = None) -> tuple[list[Secret], list[Hit], int]:
    """(the secrets looked for, where they were found, how many files were searched)."""
    secrets = [s for s in [*known_secrets(root, environ), *extra] if len(s.value) >= MIN_LENGTH]
    hits: list[Hit] = []
    count = 0
    if secrets:
        for path in searched_files(root, list(also), secrets):
            count += 1
            hits.extend(_scan_file(path, secrets))
    return secrets, hits, count


def _secret_arg(text: str) -> Secret:
    name, sep, value = text.partition("=")
    if not sep or not name or len(value) < MIN_LENGTH:
        raise argparse.ArgumentTypeError(f"--secret takes NAME=VALUE with a value of at least {MIN_LENGTH} characters")
    return Secret(name, value, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=PROJECT_ROOT, help="the checkout whose run is checked")
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="more files to search (a saved run output)")
    parser.add_argument("--secret", type=_secret_arg, action="append", default=[], help="NAME=VALUE to look for too")
    args = parser.parse_args(argv)
    secrets, hits, count = grep(args.root.resolve(), args.also, args.secret)
    if not secrets:
        print(f"no secret found to look for under {args.root} (no token file, Airflow passwords or config "
              "passwords): nothing was checked", file=sys.stderr)
        return 2
    print(f"looked for {len(secrets)} secrets ({', '.join(sorted({s.name for s in secrets}))}) in {count} files")
    for hit in hits:
        print(f"LEAK: {hit}")
    print(f"{len(hits)} leaks" if hits else "no secret found in any log, report or data file")
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
