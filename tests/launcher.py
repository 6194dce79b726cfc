"""``python -m MODULE ARGS`` for the tests, without paying Python's and JAX's start-up each
time: a launcher process imports the libraries once and forks one child per command.

A child is a real process — its own pid, exit status, signals, SIGKILL by a fail point,
file descriptors 1 and 2 — that runs the module as ``__main__`` exactly as ``python -m``
does (``runpy``), with the command's environment and working directory; only the imports of
``PRELOADED`` (jax, flax, optax, orbax, TFDS, scikit-learn, matplotlib, flowjax, cvae, ...)
were done before the fork. That saves about 5 s of every command (most of a command that
only prints an error, half of a tiny training), which is most of what the suite's launches
used to cost. A child ends as ``python -m`` ends (its status, exit functions, non-daemon
threads and flushed streams) and then leaves at once, without the interpreter's teardown,
which in a fork copies every page of the launcher: 60 ms a command instead of 0.95 s.

What a fork cannot give, the client does with a fresh interpreter (``subprocess``):

* a command whose environment changes a variable read when those libraries are imported
  (``JAX_*``, ``PYTHON*``, ``TF_*``, ``TFDS_*``): the children would keep the launcher's;
* ``fresh=True``, for a test about interpreter start-up itself (Ctrl-C while importing).

Children of one launcher share its string-hash seed (PYTHONHASHSEED); the tests that
compare two processes' numbers run one side in a fresh interpreter, so a dependence on
set or dict order of strings still shows.

The server side is this module run as a script; it must never initialise a JAX backend
(XLA's threads do not survive a fork), and it checks that before every fork.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Read by the libraries the launcher preloads when they are imported: a command that sets
# one of these differently gets a fresh interpreter.
IMPORT_TIME_PREFIXES = ("JAX_", "PYTHON", "TF_", "TFDS_", "XLA_PYTHON", "MPL")
# Everything a training, evaluation or sampling command imports, lazily imported ones
# included (scikit-learn, matplotlib, TFDS, tensorboardX, flowjax, grain: about 2 s of
# each command otherwise). None starts a thread or a JAX backend when imported.
PRELOADED = (
    "jax",
    "jax.numpy",
    "flax.linen",
    "optax",
    "orbax.checkpoint",
    "ml_collections",
    "absl.app",
    "numpy",
    "cvae",
    "cvae.analysis",
    "experiments.cli",
    "sklearn.mixture",
    "scipy.stats",
    "matplotlib.pyplot",
    "PIL.Image",
    "tensorflow_datasets",
    "tensorboardX",
    "flowjax.flows",
    "flowjax.train",
    "grain",
)


# ------------------------------------------------------------------------------ server


def _serve() -> str | None:
    """Reads one JSON request per line on stdin, answers one JSON line on the original
    stdout. Requests: {"spawn": {...}} → {"pid"}; {"wait": pid, "block": bool} →
    {"returncode"} (null while running). Returns None in the server when stdin closes, and
    the module to run in a forked child."""
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the libraries print goes to the launcher's log, not the channel
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    from jax._src import xla_bridge

    # The preloaded objects go to the collector's permanent generation: a child's
    # collections then skip them instead of writing to (and so copying) every page the
    # launcher holds — the copy-on-write that the fork otherwise pays on first touch.
    gc.collect()
    gc.freeze()
    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            flags = 0 if request.get("block") else os.WNOHANG
            try:
                pid, status = os.waitpid(request["wait"], flags)
            except ChildProcessError:
                answers.write(json.dumps({"error": "no such child"}) + "\n")
                continue
            code = os.waitstatus_to_exitcode(status) if pid else None
            answers.write(json.dumps({"returncode": code}) + "\n")
            continue
        spec = request["spawn"]
        if xla_bridge.backends_are_initialized():  # never true unless a preload changes
            answers.write(json.dumps({"error": "a JAX backend started in the launcher"}) + "\n")
            continue
        if threading.active_count() > 1:  # a fork copies one thread: the others' locks hang
            answers.write(json.dumps({"error": "a preload started a thread"}) + "\n")
            continue
        pid = os.fork()
        if pid == 0:
            answers.close()
            _become(spec)
            return spec["module"]
        answers.write(json.dumps({"pid": pid}) + "\n")
    return None


def _become(spec: dict) -> None:
    """In the forked child: the command's descriptors, directory, environment and argv."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, spec["stdout"]), (2, spec["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's stdin, kept open)
    os.chdir(spec["cwd"])
    os.environ.clear()
    os.environ.update(spec["env"])
    sys.argv = [spec["module"], *spec["args"]]
    sys.path[0] = spec["cwd"]  # as `python -m` puts the working directory first


# ------------------------------------------------------------------------------ client


class Launcher:
    """One server process, started on first use and stopped at exit."""

    def __init__(self) -> None:
        self._env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
        self._logs = pathlib.Path(tempfile.mkdtemp(prefix="cvae-launcher-"))
        self._server: subprocess.Popen | None = None
        atexit.register(self._stop)

    @property
    def env(self) -> dict:
        """The environment a command runs in unless it says otherwise: one CPU device."""
        return dict(self._env)

    def _request(self, message: dict) -> dict:
        if self._server is None or self._server.poll() is not None:
            self._start()
        assert self._server is not None and self._server.stdin and self._server.stdout
        self._server.stdin.write(json.dumps(message) + "\n")
        self._server.stdin.flush()
        answer = json.loads(self._server.stdout.readline() or "{}")
        if "error" in answer or not answer:
            log = (self._logs / "launcher.log").read_text()[-2000:]
            raise RuntimeError(f"the test launcher failed: {answer}\n{log}")
        return answer

    def _start(self) -> None:
        log = open(self._logs / "launcher.log", "ab")  # noqa: SIM115 (the server's stderr)
        self._server = subprocess.Popen(
            [sys.executable, "-m", "tests.launcher"],
            cwd=ROOT,
            env=self._env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert self._server.stdout is not None
        ready = json.loads(self._server.stdout.readline() or "{}")
        if "ready" not in ready:
            raise RuntimeError(
                "the test launcher did not start: "
                + (self._logs / "launcher.log").read_text()[-2000:]
            )

    def _stop(self) -> None:
        """Ends the server (its stdin closes) and removes its log and output files."""
        if self._server is not None and self._server.poll() is None:
            self._server.stdin.close()  # type: ignore[union-attr]
            self._server.wait(timeout=30)
        shutil.rmtree(self._logs, ignore_errors=True)

    def forkable(self, env: dict) -> bool:
        """Whether a command with this environment can be a fork of the launcher."""
        keys = set(env) | set(self._env)
        return not any(
            env.get(k) != self._env.get(k) for k in keys if k.startswith(IMPORT_TIME_PREFIXES)
        )

    def spawn(self, module: str, args, env: dict, cwd) -> Child:
        stem = self._logs / f"{time.monotonic_ns()}"
        spec = {
            "module": module,
            "args": [str(a) for a in args],
            "env": env,
            "cwd": str(cwd),
            "stdout": f"{stem}.out",
            "stderr": f"{stem}.err",
        }
        for stream in (spec["stdout"], spec["stderr"]):  # there even if the child dies at once
            pathlib.Path(stream).touch()
        pid = self._request({"spawn": spec})["pid"]
        return Child(self, pid, pathlib.Path(spec["stdout"]), pathlib.Path(spec["stderr"]))

    def wait(self, pid: int, block: bool) -> int | None:
        return self._request({"wait": pid, "block": block})["returncode"]


class Child:
    """The part of ``subprocess.Popen`` the tests use, for a forked command; stdout and
    stderr are read when it has exited (``communicate``)."""

    def __init__(self, launcher: Launcher, pid: int, stdout: pathlib.Path, stderr: pathlib.Path):
        self._launcher, self.pid, self._out, self._err = launcher, pid, stdout, stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._launcher.wait(self.pid, block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.pid, timeout or 0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        texts = (self._out.read_text(errors="replace"), self._err.read_text(errors="replace"))
        self._out.unlink(missing_ok=True)
        self._err.unlink(missing_ok=True)
        return texts


_LAUNCHER: Launcher | None = None


def launcher() -> Launcher:
    global _LAUNCHER
    if _LAUNCHER is None:
        _LAUNCHER = Launcher()
    return _LAUNCHER


def start(module: str, *args, env=None, cwd=ROOT, fresh: bool = False):
    """``python -m module args`` started and not waited for: a ``Child`` forked from the
    launcher, or a ``subprocess.Popen`` (text pipes) where a fork would not be faithful.
    ``env`` adds to (or, with None values, removes from) the default environment."""
    merged = launcher().env
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    if fresh or not launcher().forkable(merged):
        return subprocess.Popen(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=cwd,
            env=merged,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return launcher().spawn(module, args, merged, cwd)


def run(module: str, *args, env=None, cwd=ROOT, timeout=300, fresh: bool = False):
    """``python -m module args`` run to the end, as ``subprocess.run`` reports it."""
    child = start(module, *args, env=env, cwd=cwd, fresh=fresh)
    out, err = child.communicate(timeout=timeout)
    return subprocess.CompletedProcess(
        [module, *map(str, args)], child.returncode, stdout=out, stderr=err
    )


def _run_and_exit(module: str) -> None:
    """In the forked child: runs ``module`` as ``__main__`` and ends the process as Python
    ends ``python -m module`` — the exit status of its ``SystemExit`` (a message printed),
    a traceback and status 1 for an uncaught exception, death by SIGINT for an uncaught
    KeyboardInterrupt; non-daemon threads joined, ``atexit`` functions run, stdout and
    stderr flushed — and then ``os._exit``. What that skips is the interpreter's teardown
    of every module and object: in a fork of the launcher it writes to each page the
    launcher held, copying them all (measured: 0.9 s where this exit takes 21 ms)."""
    import runpy

    status, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads, as at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed by the module: Python ignores it too
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _exit_status(code) -> int:
    """The status ``sys.exit(code)`` gives: None → 0, an int as is, else printed → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    command = _serve()
    if command is not None:  # a forked child: run its module as `python -m` does
        _run_and_exit(command)
