"""What the export/ smoke tests share: repository paths, a standard-library `.npy` reader, and
the lists of product, lab and experiment scripts."""

from __future__ import annotations

import ast
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "export"
if str(EXPORT) not in sys.path:
    sys.path.insert(0, str(EXPORT))

# The product path: what makes bundles, fixtures and benchmark reports (export/README.md).
PRODUCT = [
    "_common.py", "bench_compare.py", "bench_diffusers.py", "bundle_format.py", "check_parity.py",
    "export_bundle.py", "image_io_reference.py", "make_karlo_random.py", "make_tiny.py", "make_tiny_kandinsky.py",
    "quantize_bundle.py", "reference.py", "reference_kandinsky.py",
    "scheduler_reference.py", "test_export.py", "torch_rng_vectors.py", "vision_reference.py",
]
LAB = sorted(p.name for p in (EXPORT / "shapes").glob("*.py"))
EXPERIMENTS = sorted(p.name for p in (EXPORT / "experiments").glob("*.py"))


def all_scripts() -> list[Path]:
    return ([EXPORT / name for name in PRODUCT] + [EXPORT / "shapes" / name for name in LAB]
            + [EXPORT / "experiments" / name for name in EXPERIMENTS])


def relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def top_level_imports(path: Path) -> set[str]:
    """First components of the modules a script imports when it is loaded (not inside functions)."""
    names = set()
    for node in parse(path).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names.add(node.module.split(".")[0])
    return names


def needs_only_stdlib(path: Path, seen: frozenset = frozenset()) -> bool:
    """Whether loading `path` imports nothing outside the standard library (local modules of
    export/ are followed)."""
    for name in top_level_imports(path):
        local = next((d / f"{name}.py" for d in (path.parent, EXPORT) if (d / f"{name}.py").exists()), None)
        if local is not None:
            if local not in seen and not needs_only_stdlib(local, seen | {path}):
                return False
        elif name not in sys.stdlib_module_names:
            return False
    return True


def argparse_flags(path: Path) -> set[str]:
    """Every `--flag` a script declares with `add_argument`, including `f"--{name}"` in a loop
    over a module-level constant (`for name, … in CONSTANT:`)."""
    tree = parse(path)
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    loop_values: dict[str, list] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Name) and node.iter.id in constants:
            items = list(constants[node.iter.id])
            if isinstance(node.target, ast.Name):
                loop_values[node.target.id] = items
            elif isinstance(node.target, ast.Tuple):
                for i, element in enumerate(node.target.elts):
                    if isinstance(element, ast.Name):
                        loop_values[element.id] = [item[i] for item in items]
    flags = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument":
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--"):
                    flags.add(arg.value)
                elif (isinstance(arg, ast.JoinedStr) and len(arg.values) == 2
                      and isinstance(arg.values[0], ast.Constant) and arg.values[0].value == "--"
                      and isinstance(arg.values[1], ast.FormattedValue)
                      and isinstance(arg.values[1].value, ast.Name)):
                    flags.update(f"--{v}" for v in loop_values.get(arg.values[1].value.id, []))
        # a parser built by a function of a sibling module (`training.arguments(...)`)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and (path.parent / f"{node.func.value.id}.py").exists()):
            module = parse(path.parent / f"{node.func.value.id}.py")
            for function in module.body:
                if isinstance(function, ast.FunctionDef) and function.name == node.func.attr:
                    flags |= argparse_flags_in(function)
    return flags


def argparse_flags_in(tree: ast.AST) -> set[str]:
    return {a.value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
            for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("--")}


def read_npy(path: Path) -> tuple[str, tuple[int, ...], bytes]:
    """(dtype descr, shape, raw data) of a C-order `.npy` file (format versions 1–3)."""
    raw = path.read_bytes()
    if raw[:6] != b"\x93NUMPY":
        raise ValueError(f"{path}: not a .npy file")
    major = raw[6]
    if major == 1:
        (length,), start = struct.unpack("<H", raw[8:10]), 10
    else:
        (length,), start = struct.unpack("<I", raw[8:12]), 12
    header = ast.literal_eval(raw[start:start + length].decode("latin-1"))
    if header["fortran_order"]:
        raise ValueError(f"{path}: Fortran order")
    return header["descr"], tuple(header["shape"]), raw[start + length:]


def read_f32(path: Path) -> tuple[tuple[int, ...], list[int]]:
    """Shape and the IEEE bit patterns of a little-endian float32 `.npy`."""
    descr, shape, data = read_npy(path)
    if descr != "<f4":
        raise ValueError(f"{path}: dtype {descr}, expected <f4")
    return shape, list(struct.unpack(f"<{len(data) // 4}I", data))
