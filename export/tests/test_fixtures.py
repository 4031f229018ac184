"""The committed fixtures against the manifests the reference scripts write with them: every file
listed is present, with the shape and dtype declared (reference.py, image_io_reference.py,
vision_reference.py; the RNG vectors are test_torch_rng.py's)."""

from __future__ import annotations

import json
import math
import unittest
from pathlib import Path

from support import REPO, read_npy

FIXTURES = REPO / "tests" / "fixtures"
FILE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".webp", ".json")


def named_files(value) -> list[str]:
    """Every string in a JSON value that names a file."""
    if isinstance(value, dict):
        return [f for v in value.values() for f in named_files(v)]
    if isinstance(value, list):
        return [f for v in value for f in named_files(v)]
    if isinstance(value, str) and value.lower().endswith(FILE_SUFFIXES) and " " not in value:
        return [value]
    return []


def case_dirs() -> list[Path]:
    return sorted(p.parent for root in ("ref", "ref-shapes") for p in (FIXTURES / root).glob("*/case.json"))


class ParityCases(unittest.TestCase):
    """tests/fixtures/ref*/<case>/case.json (reference.py)."""

    def test_there_are_cases(self):
        names = {d.name for d in case_dirs()}
        self.assertIn("basic", names)
        self.assertIn("shapes_default", names)

    def test_noise_draws_are_present_in_order_with_their_shapes(self):
        for case in case_dirs():
            meta = json.loads((case / "case.json").read_text())
            draws = meta["noise"]
            stored = [d for d in draws if "file" in d]
            self.assertEqual([d["file"] for d in stored], [f"noise_{i:03}.npy" for i in range(len(stored))], case)
            # only the large super-resolution draws of non-full cases are left out: the Rust test
            # draws them from its torch-compatible generator
            for d in draws:
                if "file" not in d:
                    self.assertEqual((d["stage"], meta["full"]), ("super_res", False), case)
            stages = [d["stage"] for d in draws]
            # diffusers' order: the prior's draws, then the decoder's, then the upsamplers'
            order = {"prior": 0, "decoder": 1}
            ranks = [order.get(s, 2) for s in stages]
            self.assertEqual(ranks, sorted(ranks), f"{case}: draws out of stage order: {stages}")
            for draw in stored:
                path = case / draw["file"]
                descr, shape, _ = read_npy(path)
                self.assertEqual((descr, list(shape)), ("<f4", draw["shape"]), path)

    def test_every_intermediate_is_stored_with_its_shape(self):
        for case in case_dirs():
            meta = json.loads((case / "case.json").read_text())
            for name, shape in meta["files"].items():
                if name == "image":
                    for i in range(shape[0]):
                        self.assertTrue((case / f"image_{i}.png").is_file(), f"{case}: image_{i}.png")
                    continue
                full, sub = case / f"{name}.npy", case / f"{name}.sub4.npy"
                if full.exists():
                    self.assertEqual(list(read_npy(full)[1]), shape, full)
                else:
                    self.assertTrue(sub.exists(), f"{case}: neither {full.name} nor {sub.name}")
                    expected = shape[:-2] + [math.ceil(shape[-2] / 4), math.ceil(shape[-1] / 4)]
                    self.assertEqual(list(read_npy(sub)[1]), expected, sub)

    def test_full_cases_store_the_super_resolution_tensors_in_full(self):
        for case in case_dirs():
            meta = json.loads((case / "case.json").read_text())
            if meta["full"] and "sr_out" in meta["files"]:
                self.assertTrue((case / "sr_out.npy").exists(), case)


class Manifests(unittest.TestCase):
    def test_listed_files_exist(self):
        for manifest in (FIXTURES / "image_io" / "manifest.json", FIXTURES / "vision" / "manifest.json",
                         FIXTURES / "rng" / "manifest.json"):
            listed = named_files(json.loads(manifest.read_text()))
            self.assertGreater(len(listed), 5, manifest)
            missing = [f for f in listed if not (manifest.parent / f).is_file()]
            self.assertEqual(missing, [], manifest)

    def test_image_io_shapes(self):
        manifest = json.loads((FIXTURES / "image_io" / "manifest.json").read_text())
        for case in manifest["resize"]:
            self.assertEqual(list(read_npy(FIXTURES / "image_io" / case["input"])[1]), case["input_shape"], case["name"])
            self.assertEqual(list(read_npy(FIXTURES / "image_io" / case["output"])[1]), case["output_shape"],
                             case["name"])
        rgb = manifest["to_rgb8"]
        self.assertEqual(list(read_npy(FIXTURES / "image_io" / rgb["input"])[1]), rgb["input_shape"])
        descr, shape, _ = read_npy(FIXTURES / "image_io" / rgb["expected"])
        self.assertEqual((descr, list(shape)), ("|u1", rgb["expected_shape"]))

    def test_vision_preprocessing_matches_the_bundles(self):
        processor = json.loads((FIXTURES / "vision" / "manifest.json").read_text())["processor"]
        for bundle in ("tiny", "shapes"):
            manifest = json.loads((REPO / "models" / bundle / "bundle.json").read_text())
            self.assertEqual(manifest["image_processor"], processor, bundle)


if __name__ == "__main__":
    unittest.main()
