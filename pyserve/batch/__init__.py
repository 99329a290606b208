"""Batch scoring: a file of rows through a model, offline, by the same core that serves it online.

``pyserve batch MODEL_OR_ARTIFACT --input FILE --output FILE`` (:mod:`pyserve.batch.cli`). The parts:
:mod:`~pyserve.batch.reader` (Parquet, CSV, JSON Lines, NPY, NPZ in chunks),
:mod:`~pyserve.batch.mapping` (columns -> model inputs, rows checked per chunk),
:mod:`~pyserve.batch.model` (the model hosted in-process by :class:`~pyserve.service.ModelHost`),
:mod:`~pyserve.batch.runner` (the chunks through the core, every instance kept busy),
:mod:`~pyserve.batch.writer` (output and errors files), :mod:`~pyserve.batch.progress`.
See docs/batch.md.
"""
