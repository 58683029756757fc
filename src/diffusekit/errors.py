"""Error types the command line reports as one line.

``UserError`` marks a mistake the user can fix (a bad flag, a config typo, an existing output file). It
subclasses ``ValueError`` so code that already raises or catches ``ValueError`` for such input keeps
working. ``diffusekit`` on the command line prints a ``UserError`` as ``error: <message>`` and exits 2;
any other exception is a bug and keeps its traceback (``--debug`` shows the traceback for user errors too).
"""

from __future__ import annotations

from contextlib import contextmanager


class UserError(ValueError):
    """A mistake in the user's input: the message says what was wrong and what is allowed."""


@contextmanager
def user_input(prefix: str = "", kinds: tuple[type[Exception], ...] = (ValueError, TypeError)):
    """Treat an exception of ``kinds`` raised inside the block as a :class:`UserError`.

    For the validation phase of a command, where every such error comes from what the user gave (an
    unknown name, a bad option: library functions validate their arguments with ``ValueError``, and a
    misspelt keyword from a config file is a ``TypeError``); ``prefix`` (e.g. ``"--config cfg.yaml: "``)
    is put before the message. Errors raised after this phase, while the work runs, are left alone and
    keep their traceback.
    """
    try:
        yield
    except UserError as err:
        if not prefix:
            raise
        raise UserError(prefix + str(err)) from err
    except kinds as err:
        raise UserError(prefix + (str(err) or type(err).__name__)) from err
