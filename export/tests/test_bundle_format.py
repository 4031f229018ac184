"""The committed bundles (models/tiny, models/shapes) against the format export_bundle.py writes
(bundle_format.py) and the Rust loader reads (src/bundle.rs)."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import unittest
from pathlib import Path

from support import REPO  # noqa: I001  (puts export/ on sys.path first)

import bundle_format  # noqa: E402

BUNDLES = [REPO / "models" / "tiny", REPO / "models" / "shapes"]


def rust_source_with(pattern: str) -> tuple[Path, re.Match]:
    for path in sorted((REPO / "src").rglob("*.rs")):
        found = re.search(pattern, path.read_text(encoding="utf-8"))
        if found:
            return path, found
    raise AssertionError(f"no file under src/ matches {pattern!r}")


class CommittedBundles(unittest.TestCase):
    def test_every_file_present_with_its_sha256(self):
        for bundle in BUNDLES:
            self.assertEqual(bundle_format.problems(bundle), [], bundle)

    def test_writer_reproduces_the_committed_manifest_byte_for_byte(self):
        for bundle in BUNDLES:
            text = (bundle / "bundle.json").read_text()
            parsed = json.loads(text)
            parts = {k: parsed.get(k) for k in bundle_format.KEYS if k not in ("format", "format_version")}
            self.assertEqual(bundle_format.dumps(bundle_format.manifest(**parts)), text, bundle)

    def test_stage_shapes_are_consistent(self):
        for bundle in BUNDLES:
            m = bundle_format.check(bundle, hashes=False)
            dim = m["embedding_dim"]
            prior_out = m["models"][m["prior"]["model"]]["outputs"][0]["shape"]
            self.assertEqual(prior_out, ["batch", dim], bundle)
            decoder_in = m["models"][m["decoder"]["model"]]["inputs"][0]["shape"]
            size = m["decoder"]["sample_size"]
            self.assertEqual(decoder_in, ["batch", m["decoder"]["in_channels"], size, size], bundle)
            # the decoder predicts epsilon and the learned variance: twice its input channels
            decoder_out = m["models"][m["decoder"]["model"]]["outputs"][0]["shape"]
            self.assertEqual(decoder_out[1], 2 * m["decoder"]["in_channels"], bundle)
            for up in m["upsamplers"]:
                self.assertGreater(up["sample_size"], size, f"{bundle}: upsamplers in increasing size")
                sample = m["models"][up["first"]]["inputs"][0]["shape"]
                self.assertEqual(sample, ["batch", 2 * up["in_channels"], up["sample_size"], up["sample_size"]])
                size = up["sample_size"]
            for stage in [m["prior"], m["decoder"], *m["upsamplers"]]:
                self.assertEqual(stage["scheduler"]["beta_schedule"], "squaredcos_cap_v2")
                self.assertEqual(stage["scheduler"]["num_train_timesteps"], 1000)

    def test_the_tokenizer_pads_as_the_manifest_says(self):
        from _common import bytes_to_unicode

        for bundle in BUNDLES:
            m = bundle_format.check(bundle, hashes=False)
            vocab = json.loads((bundle / m["tokenizer"]["file"]).read_text())["model"]["vocab"]
            self.assertEqual(len(vocab), 49408, "the CLIP BPE vocabulary")
            self.assertEqual(vocab[m["tokenizer"]["pad_token"]], m["tokenizer"]["pad_id"])
            self.assertEqual((vocab["<|startoftext|>"], vocab["<|endoftext|>"]), (49406, 49407))
            # the first 256 tokens are the byte alphabet, in _common.bytes_to_unicode's order
            by_id = sorted(vocab, key=vocab.get)
            self.assertEqual(by_id[:256], list(bytes_to_unicode().values()))


TINY_KANDINSKY = REPO / "models" / "tiny-kandinsky"


class KandinskyBundle(unittest.TestCase):
    """models/tiny-kandinsky (export_bundle.py DECODER_DIR OUT --prior PRIOR_DIR): format version 2,
    family kandinsky2.2."""

    def test_files_and_writer(self):
        self.assertEqual(bundle_format.problems(TINY_KANDINSKY), [])
        text = (TINY_KANDINSKY / "bundle.json").read_text()
        parsed = json.loads(text)
        self.assertEqual((parsed["format_version"], parsed["family"]),
                         (bundle_format.KANDINSKY_FORMAT_VERSION, bundle_format.KANDINSKY))
        parts = {k: parsed[k] for k in bundle_format.KANDINSKY_KEYS
                 if k not in ("format", "format_version", "family", "quantization")}
        self.assertEqual(bundle_format.dumps(bundle_format.kandinsky_manifest(**parts)), text)

    def test_shapes_follow_the_movq_factor(self):
        m = bundle_format.check(TINY_KANDINSKY, hashes=False)
        d = m["decoder"]
        self.assertEqual(d["movq_scale_factor"], 8)
        self.assertEqual(m["models"][d["model"]]["inputs"][0]["shape"], ["batch", d["latent_channels"], "height", "width"])
        self.assertEqual(m["models"][d["model"]]["outputs"][0]["shape"][1], 2 * d["latent_channels"])
        self.assertEqual(m["models"][d["movq_decoder"]]["outputs"][0]["shape"], ["batch", 3, "height", "width"])
        self.assertEqual(d["scheduler"]["_class_name"], "DDPMScheduler")
        self.assertEqual(m["prior"]["scheduler"]["_class_name"], "UnCLIPScheduler")

    def test_zero_image_embedding_is_a_vector_of_embedding_dim(self):
        m = bundle_format.check(TINY_KANDINSKY, hashes=False)
        from support import read_f32

        shape, bits = read_f32(TINY_KANDINSKY / m["prior"]["negative_image_embed"]["file"])
        self.assertEqual(shape, (m["embedding_dim"],))
        self.assertTrue(any(b & 0x7FFFFFFF for b in bits), "not all zero")

    def test_a_missing_zero_embedding_is_refused(self):
        tmp = Path(tempfile.mkdtemp())
        try:
            for path in TINY_KANDINSKY.iterdir():
                if path.name != "zero_image_embed.npy":
                    (tmp / path.name).symlink_to(path)
            found = bundle_format.problems(tmp)
            self.assertEqual(len(found), 1, found)
            self.assertIn("zero_image_embed.npy: missing", found[0])
        finally:
            shutil.rmtree(tmp)


class RustLoaderAgrees(unittest.TestCase):
    def test_format_name_and_version(self):
        _, version = rust_source_with(r"pub const FORMAT_VERSION: u64 = (\d+);")
        self.assertEqual(int(version.group(1)), bundle_format.NEWEST_VERSION)
        _, name = rust_source_with(r'pub const FORMAT: &str = "([^"]+)";')
        self.assertEqual(name.group(1), bundle_format.FORMAT)

    def test_manifest_fields(self):
        _, struct = rust_source_with(r"(?s)pub struct Manifest \{(.*?)\n\}")
        fields = set(re.findall(r"pub (\w+):", struct.group(1)))
        # `layout` is flattened: the `family` tag and each family's fields.
        _, layout = rust_source_with(r"(?s)pub enum Layout \{(.*?)\n\}")
        family_fields = set(re.findall(r"^\s+(\w+): \w", layout.group(1), re.M))
        fields = (fields - {"layout"}) | {"family"} | family_fields
        self.assertEqual(fields, set(bundle_format.KEYS) | set(bundle_format.KANDINSKY_KEYS))


class LoaderChecks(unittest.TestCase):
    """Each rule on a copy of models/tiny's manifest (the model files are linked, not copied)."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        tiny = REPO / "models" / "tiny"
        for path in tiny.iterdir():
            if path.name != "bundle.json":
                (self.tmp / path.name).symlink_to(path)
        self.manifest = json.loads((tiny / "bundle.json").read_text())

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def problems_after(self, change) -> list[str]:
        m = json.loads(json.dumps(self.manifest))
        change(m)
        bundle_format.write(self.tmp, m)
        return bundle_format.problems(self.tmp)

    def test_unchanged_copy_loads(self):
        self.assertEqual(self.problems_after(lambda m: None), [])

    def test_other_format_version_is_refused(self):
        found = self.problems_after(lambda m: m.update(format_version=2))
        self.assertEqual(len(found), 1)
        self.assertIn("format_version 2", found[0])

    def test_modified_file_is_refused(self):
        (self.tmp / "tokenizer.json").unlink()
        shutil.copy(REPO / "models" / "tiny" / "tokenizer.json", self.tmp / "tokenizer.json")
        with open(self.tmp / "tokenizer.json", "ab") as f:
            f.write(b" ")
        found = self.problems_after(lambda m: None)
        self.assertEqual(len(found), 1)
        self.assertIn("tokenizer.json: sha256 differs", found[0])

    def test_path_leaving_the_bundle_is_refused(self):
        for path in ("../prior.onnx", "/etc/passwd", "a/../../x.onnx", ""):
            found = self.problems_after(lambda m: m["models"]["prior"].update(file=path))
            self.assertEqual(found, [f"{self.tmp / 'bundle.json'}: file path {path!r} escapes the bundle directory"])

    def test_stage_naming_an_undefined_model_is_refused(self):
        found = self.problems_after(lambda m: m["decoder"].update(model="nope"))
        self.assertEqual(len(found), 1)
        self.assertIn("model 'nope'", found[0])

    def test_clip_statistics_must_match_the_embedding_width(self):
        found = self.problems_after(lambda m: m["prior"].update(clip_std=m["prior"]["clip_std"][:-1]))
        self.assertEqual(len(found), 1)
        self.assertIn("clip_std has 31 values, embedding_dim is 32", found[0])

    def test_missing_file_is_refused(self):
        (self.tmp / "decoder.onnx").unlink()
        found = self.problems_after(lambda m: None)
        self.assertEqual(found, [f"{self.tmp / 'decoder.onnx'}: missing"])


if __name__ == "__main__":
    unittest.main()
