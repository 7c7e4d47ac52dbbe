"""flexgc: straggler-tolerant distributed gradient descent with nested gradient codes.

The source folders `common/`, `master/` and `worker/` are installed as `flexgc.common`,
`flexgc.master` and `flexgc.worker`; `flexgc.v1` is generated from `proto/` at build time.
"""

__version__ = "0.1.0"
