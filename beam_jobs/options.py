"""Command-line flags and the `main()` shared by the Beam programs.

Beam builds ONE argparse parser from every imported `PipelineOptions` subclass
(`PipelineOptions.get_all_options`), so two jobs that both declare `--input` make every pipeline
in that process fail with "conflicting option string" as soon as both modules are imported (the
Airflow task or a test imports several jobs). `add_job_argument` registers a flag once and lets the
next job reuse it, as long as both agree on its type.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import sys
from typing import Any, Callable

from core.errors import MlopsError


def add_job_argument(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """Adds `flag` to Beam's shared parser unless another job already declared it with the same type."""
    try:
        parser.add_argument(flag, **kwargs)
    except argparse.ArgumentError:
        # argparse keeps no public lookup of declared flags; this mapping has been stable since 3.2.
        existing = parser._option_string_actions.get(flag)  # noqa: SLF001
        wanted_type = kwargs.get("type")
        if existing is None or getattr(existing.type, "__name__", existing.type) != getattr(
            wanted_type, "__name__", wanted_type
        ):
            raise TypeError(
                f"{flag} is declared by two Beam jobs with different types "
                f"({getattr(existing, 'type', None)!r} and {wanted_type!r}); they share one parser"
            ) from None


def configure_cli_logging() -> None:
    """INFO for the job, WARNING for Beam: its runners forward every worker log line at INFO."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)


def run_program(run: Callable[[], Any]) -> None:
    """A Beam job's `main()`: logging as jobs want it, then `run()`; a user error ends the process
    with one `error: ...` line (exit status 1), a result is printed as JSON."""
    configure_cli_logging()
    try:
        result = run()
    except MlopsError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(dataclasses.asdict(result), indent=2))


def iso_date(text: str) -> str:
    """argparse `type=` for YYYY-MM-DD flags: validates early, keeps a string so options stay serializable."""
    try:
        return datetime.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, got {text!r}") from None


def utc_midnight(day: str) -> datetime.datetime:
    """The start of a YYYY-MM-DD day in UTC, the form the window arguments take."""
    return datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time(), tzinfo=datetime.timezone.utc)


def require_flags(job: str, values: dict[str, Any]) -> None:
    """Flags cannot be argparse-`required`: Beam parses every job's flags for every pipeline."""
    missing = [flag for flag, value in values.items() if value in (None, "")]
    if missing:
        raise SystemExit(f"{job}: missing required flag(s) {', '.join(missing)}")
