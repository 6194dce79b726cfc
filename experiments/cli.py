"""What every launcher shares: logging set-up and turning bad use into one line, exit 2.

A mistake by the user (a bad flag or config value, a mistyped config field, a config file
that does not load, a missing workdir or data set) prints ``error: <what is wrong and what
to do>`` and exits with status 2, without a traceback (set CVAE_DEBUG=1 to see one). A
diverged run, or a checkpoint that could not be written (a full disk), exits with status 1
and its message; Ctrl-C before training started exits quietly with status 130.
``--help`` prints the flags and exits 0; ``--helpconfig`` lists every config field with its
default.
"""

from __future__ import annotations

import atexit
import difflib
import functools
import gc
import logging
import os
import pathlib
import re
import signal
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from cvae import config as config_lib
from cvae.data import PipelineError
from cvae.runs.checkpoint import CheckpointWriteError
from cvae.runs.workdir import WorkdirLockedError
from cvae.schema import help_line
from cvae.training import TrainingDivergedError
from experiments import quiet_interrupts

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


class UsageError(ValueError):
    """The command line asks for something that cannot be done."""


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def _available_configs() -> str:
    return ", ".join(
        sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common"))
    )


# What absl says about a value its flag cannot parse, and what the flag takes instead.
_VALUE_ERRORS = (
    ("invalid literal for int()", "an integer"),
    ("could not convert string to float", "a number"),
    ("Non-boolean argument to boolean flag", "true or false"),
)


def describe_flag_error(message: str) -> str:
    """absl's one-line flag error, said as what to do.

    An unknown flag names the launcher flag or the config fields it probably meant
    (``--epochs`` → ``--config.train.num_epochs``); a value that does not parse names the
    flag, the value and the kind of value the flag takes.

    Args:
      message: the first line of absl's ``flags.Error``.

    Returns:
      The message for ``error:``.
    """
    unknown = re.match(r"Unknown command line flag '([^']+)'", message)
    if unknown:
        return f"unknown flag --{unknown[1]}{_meant(unknown[1])} (--help lists the flags)"
    value = re.match(r"flag (--[^=]+)=(.*?): (.*)$", message)
    if value:
        for symptom, takes in _VALUE_ERRORS:
            if symptom in value[3]:
                return f"{value[1]} takes {takes}, got {value[2]!r}"
    return message


def _meant(name: str) -> str:
    """'; did you mean …?' for an unknown flag: a launcher flag spelled alike, or the config
    fields whose last part is, ends with or starts with the name."""
    close = difflib.get_close_matches(name, list(flags.FLAGS), n=1, cutoff=0.75)
    if close:
        return f"; did you mean --{close[0]}?"
    if "config" not in flags.FLAGS:
        return ""
    leaf = _ABBREVIATIONS.get(name, name.replace("-", "_"))
    tiers = (
        lambda last: last == leaf,
        lambda last: last == f"num_{leaf}",
        lambda last: last.endswith("_" + leaf) or last.startswith(leaf + "_"),
    )
    for matches in tiers:  # the closest kind of match only
        fields = [f for f in _SCHEMA["fields"] if matches(f.rsplit(".", 1)[-1])]
        if fields:
            return "; did you mean " + " or ".join(f"--config.{f}" for f in fields[:3]) + "?"
    return ""


_ABBREVIATIONS = {"lr": "learning_rate", "bs": "batch_size", "epochs": "num_epochs"}


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


# The schema of the launcher's --config: the VAE's (cvae/config.py) unless a launcher of
# another kind of run declares its own (use_config_schema) before its flags are parsed.
_SCHEMA: dict[str, Any] = {"fields": config_lib.FIELDS, "defined_in": "cvae/config.py"}


def use_config_schema(fields: dict, defined_in: str) -> None:
    """Makes ``--helpconfig`` and the unknown-field message speak of another config.

    Args:
      fields: the config's ``Field``s by dotted name.
      defined_in: the file that declares them (named in the messages).
    """
    _SCHEMA.update(fields=fields, defined_in=defined_in)


def define_config_dict(name: str, config, help_text: str) -> None:
    """``config_flags.DEFINE_config_dict`` for a launcher whose config is built in code: its
    ``--config.NAME`` overrides are read from the command line as the flag is defined, so an
    unknown field is refused here, in one line, before it can become a traceback.

    Args:
      name: the flag ("config").
      config: the default config.
      help_text: the flag's help.
    """
    unknown = unknown_config_field([a for a in sys.argv[1:] if a not in HELP_FLAGS])
    if unknown:
        _fail(unknown, 2)
    config_flags.DEFINE_config_dict(name, config, help_text)


def config_field_help(config=None) -> str:
    """Every field of ``config`` (the schema's defaults when None) and its value, one per
    line, with what it is and the values an enumerated field takes or what 0 means
    (``cvae.config.field_help``, or the declared schema's lines)."""
    fields = _SCHEMA["fields"]
    if fields is config_lib.FIELDS:
        return config_lib.field_help(config)
    values = config_lib.flatten(config) if config is not None else {}
    return "\n".join(
        help_line(name, field, values.get(name, field.default)) for name, field in fields.items()
    )


def unknown_config_field(argv) -> str | None:
    """A message for the first ``--config.a.b=`` override naming no field, else None."""
    fields = list(_SCHEMA["fields"])
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        name = arg[len("--config.") :].partition("=")[0]
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return (
                f"unknown config field {name!r}{hint} (--helpconfig lists every field; "
                f"they are defined in {_SCHEMA['defined_in']})"
            )
    return None


def _config_path(argv) -> str:
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name == "--config":
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return "the config file"


def _describe_load_error(argv, err: Exception) -> str:
    """A config file that fails to load: its name, the exception and where (one line)."""
    where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
    reason = str(err).strip().splitlines()[-1] if str(err).strip() else ""
    return (
        f"could not load the config file {_config_path(argv)}{where}: "
        f"{type(err).__name__}: {reason}; a config file defines get_config() returning an "
        f"ml_collections.ConfigDict (see experiments/configs: {_available_configs()})"
    )


def _parse_flags(argv, module: str = "__main__"):
    argv = _underscored(argv)
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        usage = (sys.modules[module].__doc__ or "").strip().split("\n\n")[0]
        print(f"{usage}\n\n{flags.FLAGS.module_help(sys.modules[module])}")
        print("\n--helpconfig lists every config field and its value.")
        sys.exit(0)
    config_help = "--helpconfig" in argv
    argv = [arg for arg in argv if arg != "--helpconfig"]
    config_path = _config_path(argv)
    if "config" in flags.FLAGS and pathlib.Path(config_path).is_dir():
        _fail(_describe_os_error(IsADirectoryError(21, "Is a directory", config_path)), 2)
    try:
        parsed = flags.FLAGS(argv)
        if config_help:  # the fields of the config these flags load, overrides included
            config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
            source = (
                f"{_config_path(argv)} with the command line's overrides"
                if config is not None
                else "the schema's defaults"
            )
            print(f"config fields: {source} (set any with --config.NAME=VALUE):")
            print(config_field_help(config))
            sys.exit(0)
        return parsed
    except flags.Error as err:
        _fail(describe_flag_error(str(err).splitlines()[0]), 2)
    except OSError as err:
        _fail(unknown_config_field(argv) or _describe_os_error(err), 2)
    except Exception as err:  # the config file's own code failed, or a mistyped field
        if os.environ.get("CVAE_DEBUG"):
            raise
        _fail(unknown_config_field(argv) or _describe_load_error(argv, err), 2)


def _describe_os_error(err: OSError) -> str:
    """ml_collections reports a bad --config file as a multi-line OSError: keep its gist. A
    file where a directory belongs (``--workdir README.md``) and a directory where a file
    belongs (``--config experiments/configs``) say which path and what to give instead."""
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename:
        return (
            f"{err.filename} is a file, and a directory is needed there: give a directory "
            "(it is created if missing), e.g. --workdir runs/NAME"
        )
    if isinstance(err, IsADirectoryError) and err.filename:
        return f"{err.filename} is a directory, and a file is needed there" + (
            f": --config takes a config file, e.g. {err.filename.rstrip('/')}/"
            f"digits_cvae.py ({_available_configs()})"
            if pathlib.Path(err.filename).resolve() == CONFIG_DIR
            else ""
        )
    if "Failed loading config file" not in str(err):
        return str(err)
    reason = str(err).strip().splitlines()[-1].strip()
    return (
        f"could not load the config file: {reason}; the configs in experiments/configs "
        f"are: {_available_configs()}"
    )


def run(main, positional: bool = False) -> None:
    """``app.run(main)`` with the error policy above; ``positional`` admits arguments."""
    # At exit the interpreter's teardown passes every object of the libraries imported (JAX,
    # TFDS, scikit-learn, ...) through the cyclic collector: 0.85 s of each command on a
    # 2-core machine. Frozen, they are left to the operating system (0.14 s). Freezing
    # stops no exit function from running (it runs after those the command registers), and
    # nothing the launchers write waits for a collection: files are closed where written.
    atexit.register(gc.freeze)

    def guarded(argv):
        quiet_interrupts()
        log_to_stderr(absl_prefix=FLAGS_LOG_PREFIX.value)
        if len(argv) > 1 and not positional:
            _fail(f"unexpected arguments {argv[1:]}; flags take the form --name=value", 2)
        try:
            return main(argv)
        except KeyboardInterrupt:
            print(
                "interrupted before training got going: nothing was saved; rerun to start",
                file=sys.stderr,
            )
            sys.exit(130)
        except (TrainingDivergedError, CheckpointWriteError) as err:
            _fail(str(err), 1)
        except (WorkdirLockedError, PipelineError) as err:
            _fail(str(err), 2)
        except (ValueError, OSError) as err:
            if os.environ.get("CVAE_DEBUG"):
                raise
            _fail(_describe_os_error(err) if isinstance(err, OSError) else str(err), 2)
        except Exception as err:
            if os.environ.get("CVAE_DEBUG") or not out_of_memory(err):
                raise
            _fail(out_of_memory(err), 1)

    # --help lists the launcher's own flags, also when a console script is the program.
    app.run(guarded, flags_parser=functools.partial(_parse_flags, module=main.__module__))


FLAGS_LOG_PREFIX = flags.DEFINE_bool(
    "log_prefix",
    False,
    "Log lines with absl's prefix (level, date, microseconds, thread, file:line) instead "
    "of the time of day.",
)


class _PlainFormatter(logging.Formatter):
    """``12:03:41 message``; warnings and errors say so (``12:03:41 warning: …``)."""

    def __init__(self):
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = line.partition(" ")
            return f"{stamp} {record.levelname.lower()}: {message}"
        return line


def log_to_stderr(absl_prefix: bool = False) -> None:
    """Log lines of INFO and above on stderr, one per event, each with the time of day.

    absl's handler (installed by ``app.run``, with its long prefix) is replaced by a plain
    stream handler unless ``absl_prefix``; a plain ``StreamHandler`` is also what tqdm's
    logging redirection recognises, so log lines print above a progress bar, not through
    it (``cvae.progress``).

    Args:
      absl_prefix: keep absl's prefix (``I1207 12:03:41.590577 1402… loop.py:114]``).
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    if not absl_prefix:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_PlainFormatter())
        root.addHandler(handler)
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" chatter


def out_of_memory(err: BaseException) -> str:
    """The one line for XLA running out of memory (an empty string for any other error):
    what could not be allocated, and what to lower.

    Args:
      err: the exception a launcher raised.

    Returns:
      The message, or "".
    """
    text = str(err)
    if "RESOURCE_EXHAUSTED" not in text:
        return ""
    what = next((line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line), "")
    what = what.split("RESOURCE_EXHAUSTED:", 1)[-1].strip().rstrip(".")
    return (
        f"out of memory ({what}): ask for less at once — lower --n, --k, --batch_size or "
        "--chunk_size, or the config's train.batch_size / eval.batch_size"
    )


def exit_interrupted(signal_name: str | None) -> None:
    """Exits as the shell reports a death by that signal: 130 after SIGINT, 143 after SIGTERM
    (and 143 for a process stopped because another process of its run was signalled). A
    run or sweep that stopped before finishing never exits 0, so a scheduler or an
    ``afterok`` dependency does not take it for done."""
    sys.exit(128 + signal.Signals[signal_name or "SIGTERM"].value)


def require(value, flag: str, hint: str):
    if value is None or value == "":
        raise UsageError(f"--{flag} is required: {hint}")
    return value
