"""The ``edgecxr`` command line: parse, call one pipeline stage, print.

Each command imports its stage inside the function, so ``edgecxr predict`` and ``edgecxr bench``
never load TensorFlow. The project's own errors become one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import sys

import click

from .errors import EdgeCXRError


def friendly_errors(func):
    """Turn EdgeCXRError (and Ctrl-C) into a one-line message and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except EdgeCXRError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgecxr")
def main():
    """Chest X-ray classifier: train, quantize, export, benchmark and run it on the edge."""


# --- data -------------------------------------------------------------------------------------


@main.group()
def data():
    """Inspect a chest X-ray collection."""


@data.command("check")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@friendly_errors
def data_check(path, as_json):
    """Counts, patients, sources, image sizes, unreadable files, duplicates, leaky patients."""
    from . import data as data_mod

    report = data_mod.check_data(path)
    click.echo(report.to_json() if as_json else report.to_text())
    if not report.usable:
        sys.exit(1)


# --- train / evaluate (core: edgecxr.train, edgecxr.evaluate) ----------------------------------


# --- export (edgecxr.export) -------------------------------------------------------------------


# --- predict / bench (edgecxr.runtime, edgecxr.bench) ------------------------------------------


# --- app (mobile_app) ---------------------------------------------------------------------------


if __name__ == "__main__":
    main()
