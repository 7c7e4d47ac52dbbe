"""Generates the protobuf/gRPC modules from proto/ at build time (wheel, sdist and editable installs).

The generated package `flexgc.v1` is written to flexgc/v1/ in the source tree (git-ignored), so an
editable install and a wheel both see it; nothing generated is committed or hand-edited.
"""

from __future__ import annotations

import pathlib
from typing import ClassVar

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent.resolve()


def generate_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    out = ROOT / "flexgc"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out.parent}",
            f"--pyi_out={out.parent}", f"--grpc_python_out={out.parent}", *protos]
    # protoc resolves -I relative paths; write into ROOT so imports read `from flexgc.v1 import ...`
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    pkg = out / "v1"
    (pkg / "__init__.py").write_text('"""Generated from proto/flexgc/v1 at build time; do not edit."""\n')
    (pkg / "py.typed").write_text("")


class GenerateProtos(Command):
    description = "generate flexgc.v1 from proto/"
    user_options: ClassVar[list[tuple[str, str, str]]] = []

    def initialize_options(self) -> None: ...

    def finalize_options(self) -> None: ...

    def run(self) -> None:
        generate_protos()


class BuildPy(build_py):
    def run(self) -> None:
        generate_protos()
        super().run()


# setuptools validates package directories before any command runs, so generate up front too.
generate_protos()
setup(cmdclass={"build_py": BuildPy, "generate_protos": GenerateProtos})
