"""Start an N-process training run on this machine, for testing the multi-process path:
``python -m experiments.launch_local --num_processes 2 --devices_per_process 2 -- \\
    --config experiments/configs/digits_cvae.py --workdir runs/mp``.
``--module experiments.sweep`` launches a sweep instead (its members shard over processes).

Each process is ``python -m experiments.train <args> --coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=i`` on CPU devices, talking through gloo collectives over
loopback — the same code path as N GPU hosts, without the hardware. Output lines carry a
``[pI]`` prefix. When one process fails the others stop by themselves (JAX's heartbeat);
the launcher stops any still running after a grace period, and exits with the failure's
status. SIGINT/SIGTERM are forwarded, so every process saves and exits cleanly.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags

from experiments import cli

flags.DEFINE_integer("num_processes", 2, "Processes to start.")
flags.DEFINE_integer("devices_per_process", 2, "Simulated CPU devices in each process.")
flags.DEFINE_enum(
    "module",
    "experiments.train",
    ["experiments.train", "experiments.sweep"],
    "The launcher each process runs.",
)
flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1 (0: a free one).")
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    30,
    "Seconds before a silent process is declared dead (passed to each one).",
)
FLAGS = flags.FLAGS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices_per_process: int, base: dict | None = None) -> dict:
    """The environment of each process: CPU only, N simulated devices, gloo collectives."""
    env = dict(os.environ if base is None else base)
    xla_flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = (
        f"{xla_flags} --xla_force_host_platform_device_count={devices_per_process}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def process_commands(
    train_args: list[str],
    num_processes: int,
    port: int,
    heartbeat_timeout_s: int,
    module: str = "experiments.train",
) -> list[list[str]]:
    return [
        [
            sys.executable,
            "-m",
            module,
            *train_args,
            f"--coordinator_address=127.0.0.1:{port}",
            f"--num_processes={num_processes}",
            f"--process_id={i}",
            f"--heartbeat_timeout_s={heartbeat_timeout_s}",
        ]
        for i in range(num_processes)
    ]


def _relay(prefix: str, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"{prefix}{line}")
        sink.flush()


def main(argv):
    train_args = argv[1:]
    if FLAGS.num_processes < 1 or FLAGS.devices_per_process < 1:
        raise cli.UsageError("--num_processes and --devices_per_process must be at least 1")
    if not any(a.startswith("--workdir") for a in train_args):
        raise cli.UsageError(
            "give the training flags after `--`, e.g. -- --config "
            "experiments/configs/digits_cvae.py --workdir runs/mp"
        )
    port = FLAGS.port or free_port()
    env = child_env(FLAGS.devices_per_process)
    commands = process_commands(
        train_args, FLAGS.num_processes, port, FLAGS.heartbeat_timeout_s, FLAGS.module
    )
    children = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for cmd in commands
    ]
    relays = [
        threading.Thread(target=_relay, args=(f"[p{i}] ", c.stdout, sys.stdout), daemon=True)
        for i, c in enumerate(children)
    ]
    for relay in relays:
        relay.start()

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)

    failed_at = None
    while any(c.poll() is None for c in children):
        failures = [c.returncode for c in children if c.returncode not in (None, 0)]
        if failures and failed_at is None:
            failed_at = time.monotonic()
            print(
                f"launch_local: a process exited with status {failures[0]}; the others "
                "should stop within the heartbeat timeout",
                file=sys.stderr,
            )
        if failed_at is not None and time.monotonic() - failed_at > 2 * FLAGS.heartbeat_timeout_s:
            print("launch_local: stopping the processes still running", file=sys.stderr)
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.2)
    for relay in relays:
        relay.join(timeout=5)
    statuses = [c.returncode for c in children]
    failures = [s for s in statuses if s != 0]
    if failures:
        print(f"launch_local: exit statuses {statuses}", file=sys.stderr)
        sys.exit(failures[0] if failures[0] > 0 else 1)


def entry() -> None:
    """The console script (``pyproject.toml``): the same as ``python -m`` this module."""
    cli.run(main, positional=True)


if __name__ == "__main__":
    entry()
