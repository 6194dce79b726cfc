"""The streaming input pipeline: training batches read from the split as they are needed
(Grain), for training sets that do not fit on the device.

The on-device path (``cvae.training.steps``) keeps the whole training split on the device and
gathers each batch inside the compiled epoch. The stream reads the *same* batches — the
order of epoch e is ``steps.make_epoch_indices`` of ``(data_key, e)``, computed on the
host — from a random-access ``Source``, ``chunk_steps`` batches at a time, and feeds them
to a compiled program that scans the same optimizer step over them
(``steps.build_stream_program``). Binarization, dequantization and every other random
draw stay inside that step, keyed as on the device path, so the two paths train the same
run.

Grain does the reading: ``MapDataset.range(steps).map(read one batch).batch(chunk)``,
iterated with ``ReadOptions`` threads that prefetch in order and, with
``data.stream_workers > 0``, worker processes (``mp_prefetch``) for sources whose records
are expensive to decode (TFDS images are stored encoded). Host memory is bounded by the
prefetch buffers, never by the split.

Position: a run checkpoints at epoch ends, and the order of an epoch is a function of
``(data_key, epoch)``; the data position is therefore the checkpoint's step (epoch =
step // steps_per_epoch), and ``chunks(order, start_step)`` can start inside an epoch.
There is no iterator state to save or to drift.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cvae import faults
from cvae.data.splits import Source


class PipelineError(RuntimeError):
    """Reading the training data failed (a worker died, a file vanished); no state of the
    half-read epoch is saved."""


# A chunk holds at most this many bytes of images (fewer batches than chunk_steps when
# the batches are large): the read-ahead buffers, not the split, bound the host memory.
MAX_CHUNK_BYTES = 32 * 2**20


@dataclasses.dataclass
class Stream:
    """Chunks of up to ``chunk_steps`` batches (and ``MAX_CHUNK_BYTES``) of one epoch's
    order, read ahead by Grain.

    ``rows`` picks this process's share of every batch (a slice of the batch axis) in a
    multi-process run; every process reads only its own rows.
    """

    source: Source
    chunk_steps: int
    threads: int = 2
    prefetch: int = 2  # chunks read ahead: with the one in use and its device copy, the
    workers: int = 0  # stream holds about 4 × MAX_CHUNK_BYTES
    rows: slice = dataclasses.field(default_factory=lambda: slice(None))

    def chunks(self, order: np.ndarray, start_step: int = 0):
        """One epoch's batches, read ahead, a chunk at a time.

        Args:
          order: (steps, batch) example indices of the epoch.
          start_step: the first step to read (a run resumed inside an epoch).

        Yields:
          (images (n, b, H, W, C) uint8, labels (n, b) int32), n ≤ ``chunk_steps``; b is this
          process's share of the batch.

        Raises:
          PipelineError: reading failed (a dead reader process, an unreadable record).
        """
        import grain

        order = np.asarray(order)[start_step:, self.rows]
        source = self.source
        batch_bytes = max(1, order.shape[1] * math.prod(source.info.shape))
        steps = max(1, min(self.chunk_steps, MAX_CHUNK_BYTES // batch_bytes))

        def read_batch(step):
            faults.fault_point("stream_read")  # a reader killed here: tests/data/test_stream.py
            return source.read(order[step])

        dataset = grain.MapDataset.range(len(order)).map(read_batch).batch(steps)
        iterable = dataset.to_iter_dataset(
            grain.ReadOptions(num_threads=self.threads, prefetch_buffer_size=self.prefetch)
        )
        if self.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; a notebook
                flags.FLAGS.mark_as_parsed()  # or a test has parsed none: take the defaults
            iterable = iterable.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self.workers, per_worker_buffer_size=self.prefetch
                )
            )
        iterator = iter(iterable)
        while True:
            try:
                images, labels = next(iterator)
            except StopIteration:
                return
            except Exception as err:  # a dead worker, an unreadable record, …
                raise PipelineError(_failure_message(err)) from err
            yield images, labels


def _failure_message(err: Exception) -> str:
    """One line: what failed, and how to go on (the rerun resumes)."""
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    if "terminated unexpectedly" in first:  # Grain's words for a reader process that died
        cause = f"a reader process died ({first.split('.')[0]}"
        cause += "; -9 is a SIGKILL, often the out-of-memory killer)" if "-9" in first else ")"
        fix = "set fewer data.stream_workers (0 reads in this process)"
    else:
        cause = (
            f"the input pipeline failed while reading training data ({type(err).__name__}: {first})"
        )
        fix = "fix the data (or set data.stream_workers=0 to read in this process)"
    return f"{cause}; nothing of this epoch was saved: {fix} and rerun the same command to resume"
