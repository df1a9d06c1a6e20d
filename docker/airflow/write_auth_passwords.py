"""Writes the admin's password into Airflow's simple-auth-manager passwords file.

Airflow 3's default auth manager reads `{"<user>": "<password>", ...}` from the file named by
`[core] simple_auth_manager_passwords_file` and, for a configured user missing from it, generates
a random password and prints it to the api-server's log. On a platform that is started by a
script, the password must instead come from the operator's secrets (.env), so the `airflow-init`
service runs this before the api-server starts.

Other users already in the file keep their passwords. The file is replaced atomically (temp file
in the same folder, then rename) so the api-server never reads half a file, and it is readable by
its owner only. Standard library only: it runs in the Airflow image's own Python.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Mapping

PASSWORDS_FILE_VAR = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
USER_VAR = "AIRFLOW_ADMIN_USER"
PASSWORD_VAR = "AIRFLOW_ADMIN_PASSWORD"


class PasswordsFileError(ValueError):
    """The passwords file or the environment describing it is unusable."""


def read_passwords(path: Path) -> dict[str, str]:
    """Returns the user -> password map in `path`, or {} when the file does not exist yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    try:
        passwords = json.loads(text)
    except json.JSONDecodeError as err:
        raise PasswordsFileError(
            f"{path}: not valid JSON ({err}); expected an object of user name -> password. "
            "Fix or delete the file, then run airflow-init again."
        ) from err
    if not isinstance(passwords, dict) or not all(
        isinstance(user, str) and isinstance(password, str) for user, password in passwords.items()
    ):
        raise PasswordsFileError(f"{path}: expected a JSON object of user name -> password strings")
    return passwords


def write_passwords(path: Path, updates: Mapping[str, str]) -> dict[str, str]:
    """Sets the passwords in `updates`, keeps every other user's, and returns the new map."""
    for user, password in updates.items():
        if not user or ":" in user or "," in user:
            # The user list in airflow.cfg is "user:role,user:role": such a name cannot exist there.
            raise PasswordsFileError(f"user name {user!r} must be non-empty and contain no ':' or ','")
        if not password:
            raise PasswordsFileError(f"the password for {user!r} is empty")
    passwords = read_passwords(path)
    passwords.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            json.dump(passwords, temp_file, indent=2, sort_keys=True)
            temp_file.write("\n")
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.chmod(temp_name, 0o600)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return passwords


def main(environ: Mapping[str, str] = os.environ) -> int:
    """Reads the file path, user and password from the environment, as docker-compose.yaml sets them."""
    missing = [name for name in (PASSWORDS_FILE_VAR, PASSWORD_VAR) if not environ.get(name)]
    if missing:
        print(f"write_auth_passwords: {', '.join(missing)} not set (see .env.example)", file=sys.stderr)
        return 2
    path = Path(environ[PASSWORDS_FILE_VAR])
    user = environ.get(USER_VAR) or "admin"
    try:
        write_passwords(path, {user: environ[PASSWORD_VAR]})
    except PasswordsFileError as err:
        print(f"write_auth_passwords: {err}", file=sys.stderr)
        return 1
    print(f"write_auth_passwords: password for {user!r} written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
