"""What every launcher shares: logging set-up and turning bad use into one line, exit 2.

A mistake by the user (a bad flag or config value, a missing workdir or data set) prints
``error: <what is wrong and what to do>`` and exits with status 2, without a traceback
(set CVAE_DEBUG=1 to see one). A diverged run exits with status 1 and its message.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

from absl import app, flags

from cvae.train import TrainingDivergedError


class UsageError(ValueError):
    """The command line asks for something that cannot be done."""


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def _available_configs() -> str:
    here = pathlib.Path(__file__).parent / "configs"
    return ", ".join(sorted(p.stem for p in here.glob("*.py")
                            if p.stem not in ("__init__", "common")))


def _underscored(argv):
    """``--batch-size=8`` → ``--batch_size=8`` for every defined flag: absl only knows the
    underscore spelling, while GNU-style commands (and the benchmark's contract) use hyphens.
    Arguments after a bare ``--`` are left alone (they belong to another program)."""
    out, passthrough = [], False
    for arg in argv:
        if passthrough or arg == "--" or not arg.startswith("--"):
            passthrough = passthrough or arg == "--"
            out.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        for candidate in (name, name[2:] if name.startswith("no") else None):
            if candidate and "-" in candidate and candidate.replace("-", "_") in flags.FLAGS:
                name = name.replace("-", "_")
                break
        out.append(f"--{name}{eq}{value}")
    return out


def _parse_flags(argv):
    try:
        return flags.FLAGS(_underscored(argv))
    except flags.Error as err:
        _fail(str(err).splitlines()[0], 2)
    except OSError as err:
        _fail(_describe_os_error(err), 2)


def _describe_os_error(err: OSError) -> str:
    """ml_collections reports a bad --config file as a multi-line OSError: keep its gist."""
    if "Failed loading config file" not in str(err):
        return str(err)
    reason = str(err).strip().splitlines()[-1].strip()
    return (f"could not load the config file: {reason}; the configs in experiments/configs "
            f"are: {_available_configs()}")


def run(main, positional: bool = False) -> None:
    """``app.run(main)`` with the error policy above; ``positional`` admits arguments."""

    def guarded(argv):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("absl").setLevel(logging.WARNING)
        logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" chatter
        if len(argv) > 1 and not positional:
            _fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value", 2)
        try:
            return main(argv)
        except TrainingDivergedError as err:
            _fail(str(err), 1)
        except (ValueError, OSError) as err:
            if os.environ.get("CVAE_DEBUG"):
                raise
            _fail(_describe_os_error(err) if isinstance(err, OSError) else str(err), 2)

    app.run(guarded, flags_parser=_parse_flags)


def require(value, flag: str, hint: str):
    if value is None or value == "":
        raise UsageError(f"--{flag} is required: {hint}")
    return value
