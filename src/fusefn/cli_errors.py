"""The command line's error boundary: every error a user can cause ends as one line on stderr and exit code 2.

:class:`UserErrorGroup` is the click group class of ``fusefn`` and of every recipe's
command line. Around each command it turns

* a :class:`~fusefn.errors.FusefnError` (the library's own errors, which name what is wrong),
* an :class:`OSError` (a folder that cannot be created, a full disk, a file that cannot be read),
* click's usage errors (an unknown option, a missing argument, a bad value)

into ``error: <one line>`` on stderr and exit code 2; the traceback goes to the ``fusefn``
logger at DEBUG (a recipe's ``fusefn_debug.log``). Any other exception is a bug or an input
fusefn does not check yet: it is one line too, with exit code 1, and ``FUSEFN_TRACEBACK=1``
shows its traceback.

:func:`check_out` is what a command runs on its ``--out`` before computing anything, so an
unusable folder is reported at once and nothing is left behind.

>>> import click
>>> from click.testing import CliRunner
>>> @click.group(cls=UserErrorGroup)
... def cli():
...     pass
>>> @cli.command()
... def boom():
...     raise OSError(28, "No space left on device", "/data/out/metrics.json")
>>> r = CliRunner().invoke(cli, ["boom"])
>>> r.exit_code, r.stderr
(2, "error: No space left on device: '/data/out/metrics.json'\\n")
>>> r = CliRunner().invoke(cli, ["boom", "--bad"])
>>> r.exit_code, r.stderr
(2, "error: No such option '--bad' (see `cli boom -h`)\\n")
"""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import sys
import tempfile

import click

from fusefn.errors import FusefnError

__all__ = ["UserErrorGroup", "check_out", "one_line"]

_LOG = logging.getLogger("fusefn")


def one_line(message: str) -> str:
    """``message`` on one line: its lines joined with ``; `` (a library's multi-line message included)."""
    parts = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    return "; ".join(parts) if parts else "(no message)"


def _os_message(e: OSError) -> str:
    what = e.strerror or str(e)
    names = [repr(str(f)) for f in (e.filename, e.filename2) if f is not None]
    return f"{what}: {' -> '.join(names)}" if names else what


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {one_line(message)}", err=True)
    sys.exit(code)


def _usage(e: click.UsageError) -> None:
    where = f" (see `{e.ctx.command_path} -h`)" if e.ctx is not None else ""
    _fail(e.format_message().rstrip(".") + where, 2)


class UserErrorGroup(click.Group):
    """A click group whose user errors are one line on stderr and exit code 2 (see the module's text)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:  # the group's own options
            _usage(e)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a command's options and arguments, or no such command
            _usage(e)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except FusefnError as e:
            _LOG.debug("command failed", exc_info=True)
            _fail(str(e), 2)
        except OSError as e:
            _LOG.debug("command failed", exc_info=True)
            _fail(_os_message(e), 2)
        except Exception as e:
            if os.environ.get("FUSEFN_TRACEBACK"):
                raise
            _LOG.debug("command failed", exc_info=True)
            _fail(
                f"unexpected {type(e).__name__}: {e} (an input fusefn does not check, or a bug: "
                "FUSEFN_TRACEBACK=1 shows the traceback)",
                1,
            )


def check_out(path: str | os.PathLike, option: str = "--out") -> pathlib.Path:
    """``path`` when a folder can be written there (it is not created): else a one-line :class:`FusefnError`.

    The nearest existing folder on the way must be a folder in which a file can be made: this is
    tried (a probe file is created and removed), so a read-only file system or a file in the way
    is found before any work is done.

    >>> import tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> check_out(d / "new" / "out") == d / "new" / "out"
    True
    >>> (d / "f").write_text("x")
    1
    >>> check_out(d / "f" / "out")
    Traceback (most recent call last):
    fusefn.errors.FusefnError: --out ...: ... is a file, not a folder; choose another --out
    """
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise FusefnError(f"{option} {path}: it is a file, not a folder; choose another {option}")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise FusefnError(f"{option} {path}: {probe} is a file, not a folder; choose another {option}")
    try:
        fd, name = tempfile.mkstemp(prefix=".fusefn-probe-", dir=probe)
    except OSError as e:
        why = "read-only" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else (e.strerror or str(e))
        raise FusefnError(f"{option} {path}: cannot write in {probe} ({why}); choose another {option}") from None
    os.close(fd)
    os.unlink(name)
    return path
