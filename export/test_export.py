"""Exporter tests that need torch (so they run here, not in CI): the >2 GB path on the tiny model.

    python export/test_export.py [--unclip target/release/unclip]

1. `export_bundle.py --external-data always` writes every model as graph + one `.data` file,
   records both in bundle.json, and each passes the exporter's ORT-vs-torch check;
2. the Rust runtime loads that bundle (checksums of the .data files, signatures) and generates
   the same image as from the single-file `models/tiny` (same seed, torch rng);
3. `--fp16` exports within 1e-2 and also loads and generates.
Exit code 0 when all hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, TINY_KARLO  # noqa: E402


def generate(unclip: str, bundle: Path, out: Path) -> bytes:
    subprocess.run([unclip, "-q", "generate", "a red circle", "--model", str(bundle), "--seed", "3", "--rng", "torch",
                    "--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "-o", str(out)], check=True)
    from PIL import Image

    return Image.open(out).convert("RGB").tobytes()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unclip", default=str(REPO / "target" / "release" / "unclip"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ext = tmp / "ext"
        subprocess.run([sys.executable, str(REPO / "export" / "export_bundle.py"), str(TINY_KARLO), str(ext),
                        "--external-data", "always", "--name", "tiny"], check=True, stdout=subprocess.DEVNULL)
        manifest = json.loads((ext / "bundle.json").read_text())
        for key, model in manifest["models"].items():
            assert model.get("external_data"), f"{key}: no external data recorded"
            for f in model["external_data"]:
                assert (ext / f["file"]).stat().st_size > 0, f["file"]
        reference = generate(args.unclip, REPO / "models" / "tiny", tmp / "a.png")
        assert generate(args.unclip, ext, tmp / "b.png") == reference, "external-data bundle differs"
        print("ok: --external-data always loads in unclip and gives the same image")
        fp16 = tmp / "fp16"
        subprocess.run([sys.executable, str(REPO / "export" / "export_bundle.py"), str(TINY_KARLO), str(fp16),
                        "--fp16", "--name", "tiny-fp16"], check=True, stdout=subprocess.DEVNULL)
        assert json.loads((fp16 / "bundle.json").read_text())["dtype"] == "float16"
        generate(args.unclip, fp16, tmp / "c.png")
        print("ok: --fp16 bundle loads and generates")


if __name__ == "__main__":
    main()
