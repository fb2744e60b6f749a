"""Regenerate the `*_pb2.py` / `*_pb2.pyi` modules from the .proto files beside this one.

    python -m router.hrana.proto.generate            # rewrite them in place
    python -m router.hrana.proto.generate --check    # exit 1 if they differ from the .proto files

Needs grpcio-tools (a dev dependency: its bundled protoc, so every machine generates the same
bytes). The generated code checks at import that the `protobuf` runtime is recent enough for it,
so bumping grpcio-tools may mean bumping the runtime's lower bound in pyproject.toml.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repo: imports in the .proto files are relative to it
PROTOS = ("hrana.proto", "hrana_ws.proto", "hrana_http.proto")


def outputs() -> list[Path]:
    """The generated files, as paths beside the .proto files."""
    return [HERE / f"{Path(p).stem}_pb2{ext}" for p in PROTOS for ext in (".py", ".pyi")]


def generate(out: Path) -> None:
    """Run protoc on the .proto files, writing the modules under `out` (as under the repo
    root: `out/router/hrana/proto/...`). Raises RuntimeError if protoc fails."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # dev-only, no type hints

    relative = [str((HERE / p).relative_to(ROOT)) for p in PROTOS]
    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--pyi_out={out}", *relative]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(relative))


def differences() -> list[str]:
    """The generated files whose checked-in text differs from what protoc makes now."""
    with tempfile.TemporaryDirectory(prefix="sqlfleet-proto-") as tmp:
        generate(Path(tmp))
        made = Path(tmp) / HERE.relative_to(ROOT)
        return [p.name for p in outputs() if not p.exists() or p.read_bytes() != (made / p.name).read_bytes()]


def main(argv: list[str]) -> int:
    if argv[1:] == ["--check"]:
        stale = differences()
        for name in stale:
            print(f"{name} is out of date: run python -m router.hrana.proto.generate", file=sys.stderr)
        return 1 if stale else 0
    generate(ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
