#!/usr/bin/env python3
"""Generate berth.api: Python protobuf and gRPC stubs for containerd 1.6's API.

The .proto files come from Debian packages at build time and are never kept in
the repository. protoc derives Python module paths from proto import paths, and
"github.com/..." is not an importable Python package, so the protos are staged
under build/protos/berth/api/... with their import lines rewritten to match.
Only file locations change: proto packages, message names and field numbers
stay exactly as containerd defines them, which is what wire compatibility needs.

Berth's own APIs (proto/ in the repository, e.g. the Transfer service) are
compiled in the same run, staged under berth/api/ too, so they import
containerd's types by their usual github.com/... paths.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

GOCODE = Path("/usr/share/gocode/src")
CONTAINERD = GOCODE / "github.com/containerd/containerd"
REPO = Path(__file__).resolve().parent.parent
BERTH_PROTOS = REPO / "proto"
STAGE = REPO / "build" / "protos"
OUT = REPO / "src"
API = OUT / "berth" / "api"


# (source file, destination relative to berth/api)
def sources() -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for p in sorted((CONTAINERD / "api").rglob("*.proto")):
        found.append((p, str(p.relative_to(CONTAINERD / "api"))))
    for rel in (
        "protobuf/plugin/fieldpath.proto",
        "runtime/v2/task/shim.proto",
        "runtime/v2/runc/options/oci.proto",
        "pkg/runtimeoptions/v1/api.proto",
    ):
        found.append((CONTAINERD / rel, rel))
    found.append((GOCODE / "github.com/gogo/protobuf/gogoproto/gogo.proto", "gogoproto/gogo.proto"))
    cg = GOCODE / "github.com/containerd/cgroups"
    found.append((cg / "stats/v1/metrics.proto", "cgroups/stats/v1/metrics.proto"))
    found.append((cg / "v2/stats/metrics.proto", "cgroups/v2/stats/metrics.proto"))
    # Berth's own protos: proto/berth/... -> berth/api/berth/... (berth.api.berth.*).
    for p in sorted(BERTH_PROTOS.rglob("*.proto")):
        found.append((p, str(p.relative_to(BERTH_PROTOS))))
    return found


IMPORT_RE = re.compile(r'^(\s*)import\s+(weak\s+|public\s+)?"([^"]+)"\s*;', re.M)


def main() -> int:
    srcs = sources()
    missing = [str(s) for s, _ in srcs if not s.is_file()]
    if missing:
        print(
            "missing protos (install the Debian -dev packages via scripts/setup.sh):",
            *missing,
            sep="\n  ",
            file=sys.stderr,
        )
        return 1
    # Map every import spelling a proto may use onto its staged location.
    rename: dict[str, str] = {}
    for src, dest in srcs:
        if src.is_relative_to(GOCODE):
            rename[str(src.relative_to(GOCODE))] = f"berth/api/{dest}"
    rename["gogoproto/gogo.proto"] = "berth/api/gogoproto/gogo.proto"

    def fix(m: re.Match[str]) -> str:
        target = rename.get(m.group(3), m.group(3))
        if target.startswith("github.com/"):
            raise SystemExit(f"unmapped proto import {m.group(3)!r}")
        # "weak" only matters to Go; a plain import keeps Python's loader simple.
        public = "public " if (m.group(2) or "").strip() == "public" else ""
        return f'{m.group(1)}import {public}"{target}";'

    shutil.rmtree(STAGE, ignore_errors=True)
    staged: list[str] = []
    for src, dest in srcs:
        out = STAGE / "berth" / "api" / dest
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(IMPORT_RE.sub(fix, src.read_text()))
        staged.append(f"berth/api/{dest}")

    import google.rpc  # googleapis-common-protos ships google/rpc/status.proto
    import grpc_tools

    tools_inc = Path(grpc_tools.__file__).parent / "_proto"
    rpc_inc = Path(next(iter(google.rpc.__path__))).parent.parent

    shutil.rmtree(API, ignore_errors=True)
    API.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{STAGE}",
        f"-I{tools_inc}",
        f"-I{rpc_inc}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--pyi_out={OUT}",
        *staged,
    ]
    subprocess.run(cmd, check=True, cwd=STAGE)
    for d in [API, *(p for p in API.rglob("*") if p.is_dir())]:
        init = d / "__init__.py"
        if not init.exists():
            init.write_text("")
    (API / "__init__.py").write_text(
        '"""Generated containerd 1.6 API stubs (build output of scripts/gen_stubs.py)."""\n'
    )
    print(f"generated {len(staged)} protos into {API.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
