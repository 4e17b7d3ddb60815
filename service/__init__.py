"""The inference service: HTTP routes over a protocol-neutral data plane, one micro-batcher per variant."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("blockdrop-serving")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
