"""The test launcher (tests/launcher.py) runs a command as ``python -m`` does: the same exit
status, output streams, environment, working directory and signals as a fresh interpreter,
and a fresh interpreter wherever a fork could not be faithful."""

import signal
import subprocess
import sys
import textwrap

import pytest

from tests import launcher

pytestmark = pytest.mark.slow


@pytest.fixture
def module(tmp_path):
    """A module that reports what a launched process sees, then does what argv[1] says."""
    (tmp_path / "probe.py").write_text(
        textwrap.dedent(
            """
            import atexit, json, os, signal, sys, threading, time
            print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "name": __name__,
                              "probe": os.environ.get("PROBE"), "path0": sys.path[0],
                              "xla_flags": os.environ.get("XLA_FLAGS")}))
            print("to stderr", file=sys.stderr)
            what = sys.argv[1]
            if what == "exit":
                sys.exit(int(sys.argv[2]))
            if what == "raise":
                raise RuntimeError("boom")
            if what == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if what == "sleep":
                time.sleep(60)
            if what == "message":
                sys.exit("a message instead of a status")
            if what == "interrupt":
                raise KeyboardInterrupt
            if what == "unflushed":  # buffered output, an exit function, a working thread
                sys.stdout = open(sys.stdout.fileno(), "w", buffering=1 << 20, closefd=False)
                atexit.register(lambda: print("exit function ran"))
                threading.Thread(target=lambda: (time.sleep(0.5), print("thread ended"))).start()
                print("buffered", end="")
                sys.exit(5)
            """
        )
    )
    return tmp_path


@pytest.mark.parametrize(
    "args, status",
    [
        (["exit", "0"], 0),
        (["exit", "3"], 3),
        (["exit", "257"], 1),
        (["message"], 1),
        (["raise"], 1),
        (["interrupt"], -signal.SIGINT),
        (["unflushed"], 5),
        (["kill"], -9),
    ],
)
def test_a_forked_command_ends_as_a_fresh_interpreter_does(module, args, status):
    forked = launcher.run("probe", *args, cwd=module, env={"PROBE": "x"})
    fresh = subprocess.run(
        [sys.executable, "-m", "probe", *args],
        cwd=module,
        env={**launcher.launcher().env, "PROBE": "x"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert forked.returncode == fresh.returncode == status
    assert forked.stdout == fresh.stdout  # argv, working directory, __main__, environment
    assert f'"cwd": "{module}"' in forked.stdout and '"name": "__main__"' in forked.stdout
    assert forked.stderr.splitlines()[0] == "to stderr"
    # The same error (a traceback's frames above the module's differ: runpy's, not the
    # launcher's), or nothing more.
    assert forked.stderr.splitlines()[-1] == fresh.stderr.splitlines()[-1]
    tracebacks = ("Traceback" in forked.stderr), ("Traceback" in fresh.stderr)
    assert tracebacks[0] == tracebacks[1] == (args[0] in ("raise", "interrupt"))


def test_a_forked_command_takes_signals_and_reports_them(module):
    child = launcher.start("probe", "sleep", cwd=module)
    assert isinstance(child, launcher.Child) and child.poll() is None
    child.send_signal(signal.SIGTERM)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGTERM
    # Killed at once, often before it has opened its streams: still an answer, no error.
    early = launcher.start("probe", "sleep", cwd=module)
    early.kill()
    early.communicate(timeout=60)
    assert early.returncode == -signal.SIGKILL
    with pytest.raises(subprocess.TimeoutExpired):
        launcher.start("probe", "sleep", cwd=module).communicate(timeout=0.5)


@pytest.mark.parametrize(
    "env", [{"JAX_ENABLE_X64": "1"}, {"PYTHONHASHSEED": "3"}, {"TFDS_DATA_DIR": "/x"}]
)
def test_a_variable_read_at_import_gets_a_fresh_interpreter(module, env):
    assert isinstance(launcher.start("probe", "exit", "0", cwd=module, env=env), subprocess.Popen)
    assert not launcher.launcher().forkable({**launcher.launcher().env, **env})


def test_a_removed_variable_is_removed(module):
    assert launcher.launcher().env["XLA_FLAGS"] == ""  # one CPU device unless told otherwise
    kept = launcher.run("probe", "exit", "0", cwd=module)
    removed = launcher.run("probe", "exit", "0", cwd=module, env={"XLA_FLAGS": None})
    assert '"xla_flags": ""' in kept.stdout and '"xla_flags": null' in removed.stdout
