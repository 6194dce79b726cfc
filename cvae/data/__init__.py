"""Data: data sets, split selection, preprocessing, and the streaming input pipeline.

What lives here, bottom to top (each module imports only those above it in this list):

* ``splits``: ``Dataset``/``DatasetInfo``, TFDS split strings, the fixed validation subset;
* ``files``: the sets that need no TFDS — ``digits`` (offline anywhere), ``npz:``, ``npy:``;
* ``catalog``: TFDS catalog sets, read with ``tfds.data_source`` (no TensorFlow, no download);
* ``preprocessing``: crops, resizes, binarization, dequantization, on-device orders;
* ``stream``: the Grain reader that feeds training chunk by chunk;
* ``sources``: random-access sources of one split (the decoded-TFDS cache among them),
  ``load`` and ``load_role``.

This package imports nothing of cvae but ``cvae.faults``; everything above it (training,
evaluation, analysis) reads data through the names re-exported here.
"""

from cvae.data.catalog import TfdsSource, feature_keys, tfds_builder, tfds_data_source
from cvae.data.preprocessing import (
    EVAL_BINARIZATION_SEED,
    ClassTable,
    Preprocessor,
    class_balanced_indices,
    dequantize,
    dynamic_binarize,
    epoch_permutation,
    evaluation_images,
    evaluation_inputs,
    evaluation_scale,
    fixed_binarization,
    to_unit_interval,
    transform_images,
    transform_of,
    transformed_shape,
)
from cvae.data.sources import (
    ArraySource,
    DecodedSource,
    Subset,
    Transformed,
    in_memory,
    is_tfds,
    load,
    load_role,
    open_source,
    read_dataset,
    role_source,
    split_nbytes,
    streaming_source,
)
from cvae.data.splits import (
    ROLES,
    VALIDATION_SPLIT_SEED,
    Dataset,
    DatasetInfo,
    DatasetNotPreparedError,
    Source,
    SplitError,
    split_of,
    split_validation,
    validation_indices,
)
from cvae.data.stream import MAX_CHUNK_BYTES, PipelineError, Stream

__all__ = [
    "EVAL_BINARIZATION_SEED",
    "MAX_CHUNK_BYTES",
    "ROLES",
    "VALIDATION_SPLIT_SEED",
    "ArraySource",
    "ClassTable",
    "Dataset",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DecodedSource",
    "PipelineError",
    "Preprocessor",
    "Source",
    "SplitError",
    "Stream",
    "Subset",
    "TfdsSource",
    "Transformed",
    "class_balanced_indices",
    "dequantize",
    "dynamic_binarize",
    "epoch_permutation",
    "evaluation_images",
    "evaluation_inputs",
    "evaluation_scale",
    "feature_keys",
    "fixed_binarization",
    "in_memory",
    "is_tfds",
    "load",
    "load_role",
    "open_source",
    "read_dataset",
    "role_source",
    "split_nbytes",
    "split_of",
    "split_validation",
    "streaming_source",
    "tfds_builder",
    "tfds_data_source",
    "to_unit_interval",
    "transform_images",
    "transform_of",
    "transformed_shape",
    "validation_indices",
]
