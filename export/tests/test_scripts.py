"""The scripts of export/ and the documents that describe them: every script compiles and names
its own path in its usage, documented paths, links and flags exist, the torch-free scripts run,
regenerate.sh parses, and the benchmark pages are what bench_compare.py renders."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import unittest
from pathlib import Path

from support import (EXPORT, PRODUCT, REPO, all_scripts, argparse_flags, needs_only_stdlib, parse,  # noqa: I001
                     relative)

DOCS = [REPO / "README.md", REPO / "docs" / "architecture.md", REPO / "docs" / "shapes-eval.md",
        EXPORT / "README.md", EXPORT / "shapes" / "README.md", EXPORT / "experiments" / "README.md"]
# Paths the documents use as examples of output, not files of the repository.
EXAMPLE_PATHS = {"models/karlo", "docs/benchmarks"}
EXAMPLE_PREFIXES = ("export/shapes/runs/",)
PATH = re.compile(r"(?<![\w/.$-])((?:export|scripts|docs|models|include|examples|deploy|tests/fixtures)/[\w./-]*\w)")
USAGE = re.compile(r"^\s*python3?\s+(\S+\.py)\b")


def usage_blocks(path: Path) -> list[tuple[str, str]]:
    """(script path, text) of each usage example in the module docstring: a `python …` line and
    the more indented `[…]` lines continuing it."""
    doc = ast.get_docstring(parse(path)) or ""
    blocks, lines = [], doc.splitlines()
    for i, line in enumerate(lines):
        found = USAGE.match(line)
        if found:
            text = line
            for more in lines[i + 1:]:
                if more.strip().startswith("[") and len(more) - len(more.lstrip()) > len(line) - len(line.lstrip()):
                    text += " " + more.strip()
                else:
                    break
            blocks.append((found.group(1), text.split("#")[0]))
    return blocks


def has_main(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


class Scripts(unittest.TestCase):
    def test_every_script_compiles(self):
        for path in all_scripts():
            compile(path.read_text(encoding="utf-8"), str(path), "exec")

    def test_usage_names_the_script_and_its_flags(self):
        for path in all_scripts():
            blocks = usage_blocks(path)
            if has_main(path) and path.name not in ("test_export.py",):
                self.assertTrue(blocks, f"{relative(path)}: no `python {relative(path)} …` usage in its docstring")
            flags = argparse_flags(path)
            for named, text in blocks:
                self.assertEqual(named, relative(path), f"{relative(path)}: usage names {named}")
                unquoted = re.sub(r'"[^"]*"', "", text)  # flags passed through to another program
                unknown = set(re.findall(r"--[a-z][\w-]*", unquoted)) - flags
                self.assertEqual(unknown, set(), f"{relative(path)}: usage shows flags it does not define")

    def test_torch_free_scripts_answer_help(self):
        stdlib = [EXPORT / name for name in PRODUCT if needs_only_stdlib(EXPORT / name)]
        self.assertTrue({"bundle_format.py", "bench_compare.py"} <= {p.name for p in stdlib},
                        "bundle_format.py and bench_compare.py must load without third-party modules")
        for path in stdlib:
            if not argparse_flags(path):
                continue
            run = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=60)
            self.assertEqual(run.returncode, 0, f"{relative(path)} --help: {run.stderr}")
            self.assertIn("usage:", run.stdout)

    def test_bundle_format_command_checks_bundles(self):
        ok = subprocess.run([sys.executable, str(EXPORT / "bundle_format.py"), "models/tiny", "models/shapes"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
        self.assertEqual((ok.returncode, ok.stdout), (0, "models/tiny: ok\nmodels/shapes: ok\n"))
        bad = subprocess.run([sys.executable, str(EXPORT / "bundle_format.py"), "models"],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("bundle.json: missing", bad.stdout)

    def test_regenerate_sh(self):
        text = (EXPORT / "regenerate.sh").read_text()
        called = re.findall(r"export/([\w/]+\.py)", text)
        self.assertTrue(called)
        self.assertEqual(sorted(set(called) - set(PRODUCT)), [], "regenerate.sh calls scripts off the product path")
        for name in called:
            self.assertTrue((EXPORT / name).is_file(), name)
        bash = shutil.which("bash")
        if bash is None:
            self.skipTest("no bash")
        run = subprocess.run([bash, "-n", str(EXPORT / "regenerate.sh")], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)

    def test_shell_scripts_parse(self):
        bash = shutil.which("bash")
        if bash is None:
            self.skipTest("no bash")
        for path in sorted(EXPORT.rglob("*.sh")):
            run = subprocess.run([bash, "-n", str(path)], capture_output=True, text=True)
            self.assertEqual(run.returncode, 0, f"{relative(path)}: {run.stderr}")


class Documents(unittest.TestCase):
    def test_paths_exist(self):
        for doc in DOCS:
            for path in sorted(set(PATH.findall(doc.read_text(encoding="utf-8")))):
                path = path.rstrip(".")
                if path in EXAMPLE_PATHS or path.startswith(EXAMPLE_PREFIXES):
                    continue
                self.assertTrue((REPO / path).exists(), f"{relative(doc)} names {path}, which does not exist")

    def test_relative_links_resolve(self):
        for doc in DOCS:
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
                if "://" in target:
                    continue
                self.assertTrue((doc.parent / target).exists(), f"{relative(doc)} links {target}")

    def test_no_references_outside_the_repository(self):
        for doc in DOCS + all_scripts() + sorted(EXPORT.rglob("*.sh")) + sorted(EXPORT.rglob("*.md")):
            text = doc.read_text(encoding="utf-8")
            # spelled in pieces, so this file does not match the search it performs
            for outside in ("../" + "shared", "shared" + "/", "DESIGN" + ".md", "NOTES" + ".md", "TORCH" + "_RNG"):
                self.assertFalse(outside in text, f"{relative(doc)} mentions {outside}")

    def test_quoted_sections_exist(self):
        """`docs/architecture.md, "Section"` and `README "Section"` anywhere in the sources name
        headings that exist."""
        headings = {}
        for doc in ("README.md", "docs/architecture.md"):
            text = (REPO / doc).read_text(encoding="utf-8")
            headings[doc] = [h.strip() for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)]
        sources = [p for root in ("src", "tests", "benches", "export", "docs", "scripts") for p in (REPO / root).rglob("*")
                   if p.is_file() and p.suffix in (".rs", ".py", ".md", ".h", ".sh", "")
                   and "checkpoint" not in p.parts and p.parent != Path(__file__).parent]
        checked = 0
        for path in sources + [REPO / "README.md", REPO / "Dockerfile"]:
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            text = text.replace('\\"', '"')
            for doc, pattern in (("docs/architecture.md", r'architecture\.md, "([^"]+)"'),
                                 ("README.md", r'README \\?"([^"\\]+)\\?"')):
                for section in re.findall(pattern, text):
                    checked += 1
                    self.assertTrue(any(h.startswith(section) for h in headings[doc]),
                                    f'{relative(path)} cites {doc}, "{section}", which has no such heading')
        self.assertGreater(checked, 5)

    def test_export_readme_rows(self):
        """Each script row of export/README.md: the flags shown exist, and `python3` marks only
        scripts that load on the standard library."""
        rows = [line for line in (EXPORT / "README.md").read_text().splitlines()
                if re.match(r"\| `export/[\w/]+\.(?:py|sh)[ `]", line)]
        self.assertGreater(len(rows), 10)
        documented = set()
        for row in rows:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            name = re.match(r"`export/([\w/]+\.(?:py|sh))", cells[0]).group(1)
            documented.add(name)
            if name.endswith(".py"):
                unknown = set(re.findall(r"--[a-z][\w-]*", cells[0])) - argparse_flags(EXPORT / name)
                self.assertEqual(unknown, set(), f"export/README.md shows flags {name} does not define")
                if cells[1].startswith("python3"):
                    self.assertTrue(needs_only_stdlib(EXPORT / name), f"{name} is marked python3 but needs more")
            else:
                self.assertTrue((EXPORT / name).is_file(), name)
        scripts = {name for name in PRODUCT if has_main(EXPORT / name)}
        self.assertEqual(scripts - documented, set(), "product scripts missing from export/README.md's table")

    def test_readme_cli_synopsis_is_complete_and_true(self):
        """The flags of README.md's CLI synopsis are exactly the long flags the `unclip` binary
        declares (clap `#[arg(long …)]` fields under src/bin/unclip/)."""
        declared = set()
        for path in sorted((REPO / "src" / "bin" / "unclip").rglob("*.rs")):
            source = path.read_text(encoding="utf-8")
            for found in re.finditer(r"#\[arg\(([^\]]*)\)\]\s*(?:///[^\n]*\n\s*)*(?:pub(?:\([^)]*\))?\s+)?(\w+)\s*:",
                                     source):
                attributes, field = found.groups()
                named = re.search(r'\blong\s*=\s*"([^"]+)"', attributes)
                if named:
                    declared.add(f"--{named.group(1)}")
                elif re.search(r"\blong\b", attributes):
                    declared.add("--" + field.replace("_", "-"))
        self.assertGreater(len(declared), 40, "no clap fields found under src/bin/unclip/")
        synopsis = (REPO / "README.md").read_text(encoding="utf-8").split("## CLI", 1)[1].split("```")[1]
        shown = set(re.findall(r"--[a-z][\w-]*", synopsis))
        self.assertEqual(declared - shown, set(), "flags missing from README.md's synopsis")
        self.assertEqual(shown - declared, set(), "README.md's synopsis shows flags unclip does not have")

    def test_benchmark_pages_are_rendered_from_their_json(self):
        import bench_compare

        for page in ("benchmarks", "benchmarks-epyc"):
            report = json.loads((REPO / "docs" / f"{page}.json").read_text())
            self.assertEqual(bench_compare.markdown(report), (REPO / "docs" / f"{page}.md").read_text(), page)


if __name__ == "__main__":
    unittest.main()
