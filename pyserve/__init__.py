"""pyserve: serve models behind KServe v2 / Open Inference Protocol with a C++ dynamic batcher."""

__version__ = "0.1.0"
