"""flexgc: straggler-tolerant distributed gradient descent with nested gradient codes.

The source folders `common/`, `master/` and `worker/` are the subpackages `flexgc.common`,
`flexgc.master` and `flexgc.worker`: `flexgc/common` etc. are committed relative symlinks to them, so
Python, mypy and editors resolve the one import path from a checkout as from an installed wheel.
`flexgc.v1` is generated from `proto/` at build time.
"""

__version__ = "0.1.0"
