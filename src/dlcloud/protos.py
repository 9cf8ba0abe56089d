"""Compile ``.proto`` files with grpcio-tools and import the generated modules.

``python -m grpc_tools.protoc`` needs three things that have nothing to do with the
schema itself: an include path for the folder of the ``.proto``, an include path for
the well-known types (``google/protobuf/*.proto``, which grpcio-tools ships inside
its own package), and the output folder on ``sys.path`` before the generated
``*_pb2.py`` / ``*_pb2_grpc.py`` can be imported. :func:`compile_protos` does that
plumbing so a lab can go from a schema to stubs in one call::

    quotes = compile_protos("quote_service.proto")
    quotes.pb2.QuoteRequest(...)            # messages
    quotes.pb2_grpc.QuoteServiceStub(...)   # client stub and servicer base class

Generated modules register their messages in protobuf's default descriptor pool,
which keeps one definition per file name for the life of the process: after you
change a ``.proto`` that is already imported, restart the kernel.
"""

from __future__ import annotations

import importlib
import importlib.resources
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["ProtoCompileError", "CompiledProto", "compile_protos"]


class ProtoCompileError(RuntimeError):
    """protoc rejected a ``.proto`` file; the message holds protoc's own diagnostics."""


@dataclass(frozen=True)
class CompiledProto:
    """The modules generated from one ``.proto`` file."""

    proto: Path
    pb2: ModuleType
    pb2_grpc: ModuleType
    files: tuple[Path, ...]

    def service_names(self) -> list[str]:
        """Fully qualified names of the services the file declares (for reflection, health)."""
        return [service.full_name for service in self.pb2.DESCRIPTOR.services_by_name.values()]


def well_known_protos_dir() -> Path:
    """The folder inside grpcio-tools that holds ``google/protobuf/*.proto``."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def module_stem(proto: Path) -> str:
    """The module name protoc gives a file: ``quote-service.proto`` gives ``quote_service``."""
    return proto.stem.replace("-", "_").replace(".", "_")


def _ensure_on_sys_path(folder: Path) -> None:
    entry = str(folder)
    if entry not in sys.path:
        sys.path.insert(0, entry)
    importlib.invalidate_caches()


def _import_fresh(name: str) -> ModuleType:
    # A module of that name imported earlier from another folder would shadow ours.
    module = sys.modules.get(name)
    if module is not None:
        return importlib.reload(module)
    return importlib.import_module(name)


def compile_protos(
    proto: str | Path,
    out_dir: str | Path | None = None,
    include_dirs: tuple[str | Path, ...] | list[str | Path] = (),
    pyi: bool = True,
) -> CompiledProto:
    """Compile ``proto`` to Python messages and gRPC stubs, then import them.

    ``out_dir`` defaults to the folder of ``proto``; it is created if needed and put
    on ``sys.path``. ``include_dirs`` are extra ``-I`` folders for imports of your own
    ``.proto`` files; the folder of ``proto`` and the well-known types are always
    included. Raises :class:`ProtoCompileError` with protoc's messages on a bad schema.
    """
    proto = Path(proto).resolve()
    if not proto.is_file():
        raise FileNotFoundError(f"No .proto file at {proto}")
    out = Path(out_dir).resolve() if out_dir is not None else proto.parent
    out.mkdir(parents=True, exist_ok=True)

    includes = [proto.parent, *(Path(d).resolve() for d in include_dirs), well_known_protos_dir()]
    command = [sys.executable, "-m", "grpc_tools.protoc"]
    command += [f"-I{folder}" for folder in includes]
    command += [f"--python_out={out}", f"--grpc_python_out={out}"]
    if pyi:
        command.append(f"--pyi_out={out}")
    command.append(str(proto))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProtoCompileError(
            f"protoc could not compile {proto.name} (exit {result.returncode}):\n"
            + (result.stderr.strip() or result.stdout.strip())
        )

    stem = module_stem(proto)
    files = tuple(
        path
        for path in (out / f"{stem}_pb2.py", out / f"{stem}_pb2_grpc.py", out / f"{stem}_pb2.pyi")
        if path.exists()
    )
    _ensure_on_sys_path(out)
    pb2 = _import_fresh(f"{stem}_pb2")
    pb2_grpc = _import_fresh(f"{stem}_pb2_grpc")
    return CompiledProto(proto=proto, pb2=pb2, pb2_grpc=pb2_grpc, files=files)
