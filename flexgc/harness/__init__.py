"""Harnesses that run real flexgc processes: on loopback, across network namespaces, behind a delay proxy.

- `processes`: the one supervision path (start, signal, stop with SIGTERM then SIGKILL) that the demo,
  the local cluster and the namespace cluster share.
- `local`: `LocalCluster`, a master and n workers as processes on loopback (demo, tests, benchmarks).
- `compose`: the services of a compose file exactly as Docker Compose resolves them (`config --format json`).
- `tc`: link shaping through the `deploy/tc` scripts, the same ones the container entrypoint runs.
- `topology`: one network namespace per service joined by a bridge, its state file and orphan cleanup.
- `cluster`: `NetnsCluster`, the compose services started in those namespaces.
- `delayproxy`: a userspace TCP proxy that adds latency where the kernel has no `sch_netem`.
- `cli`: the `flexgc netns` command.
"""
