"""The unclip bundle format on the Python side: how `export_bundle.py` writes `bundle.json`, and a
check of a bundle directory that mirrors the Rust loader's (`src/bundle.rs`; docs/architecture.md,
"Bundle format"). Standard library only, so it runs without torch:

    python3 export/bundle_format.py BUNDLE_DIR [BUNDLE_DIR ...] [--no-hashes]

prints one line per bundle (`ok` or every problem found) and exits 1 if any bundle has a problem.
The checks are those `Bundle::open` makes before the first run: `format` and `format_version`,
every stage naming a model that `models` defines, `clip_mean`/`clip_std` of `embedding_dim`
values, a known `dtype`, every file path relative and inside the bundle, every file present with
the sha256 the manifest records. (ONNX signatures are checked by the runtime when it creates
sessions, not here.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path, PurePosixPath

FORMAT = "unclip-bundle"
# The manifest version written here and read by src/bundle.rs (`FORMAT_VERSION`): a loader
# refuses any other version, so a change of the format that an older unclip cannot read bumps it.
FORMAT_VERSION = 1
# Version 2 adds `family`: "kandinsky2.2" (export_bundle.py DECODER_DIR OUT --prior PRIOR_DIR), a
# latent decoder with MoVQ instead of text_proj and upsamplers. Karlo-layout bundles stay version 1,
# so every bundle an older unclip could read still reads; the Rust loader reads both (its
# `FORMAT_VERSION` is the newest, NEWEST_VERSION here).
KANDINSKY_FORMAT_VERSION = 2
NEWEST_VERSION = KANDINSKY_FORMAT_VERSION
KANDINSKY = "kandinsky2.2"
MANIFEST = "bundle.json"
# Top-level keys in the order export_bundle.py writes them; `image_encoder` is absent when the
# checkpoint has no image tower, `quantization` until quantize_bundle.py adds int8 models.
KEYS = (
    "format", "format_version", "name", "source", "exporter", "dtype", "embedding_dim", "tokenizer",
    "image_processor", "models", "text_encoder", "image_encoder", "prior", "decoder", "upsamplers",
    "quantization",
)
OPTIONAL_KEYS = {"source", "exporter", "image_encoder", "quantization"}
KANDINSKY_KEYS = (
    "format", "format_version", "family", "name", "source", "exporter", "dtype", "embedding_dim", "tokenizer",
    "image_processor", "models", "text_encoder", "image_encoder", "prior", "decoder", "quantization",
)
DTYPES = ("float32", "float16")


class BundleError(Exception):
    """A bundle that the Rust loader would refuse; the message names every problem found."""


def sha256(path: Path) -> str:
    """sha256 of a file, lowercase hex, read in 1 MiB chunks (model files reach gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(*, name: str, source: str, exporter: dict, dtype: str, embedding_dim: int, tokenizer: dict,
             image_processor: dict, models: dict, text_encoder: dict, image_encoder: dict | None, prior: dict,
             decoder: dict, upsamplers: list, quantization: dict | None = None) -> dict:
    """The `bundle.json` object, keys in the written order (`image_encoder=None` and
    `quantization=None` leave them out)."""
    parts = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name, "source": source, "exporter": exporter,
        "dtype": dtype, "embedding_dim": embedding_dim, "tokenizer": tokenizer, "image_processor": image_processor,
        "models": models, "text_encoder": text_encoder, "image_encoder": image_encoder, "prior": prior,
        "decoder": decoder, "upsamplers": upsamplers, "quantization": quantization,
    }
    if image_encoder is None:
        del parts["image_encoder"]
    if quantization is None:
        del parts["quantization"]
    return parts


def kandinsky_manifest(*, name: str, source: str, exporter: dict, dtype: str, embedding_dim: int, tokenizer: dict,
                       image_processor: dict, models: dict, text_encoder: dict, image_encoder: dict, prior: dict,
                       decoder: dict) -> dict:
    """The `bundle.json` object of a `kandinsky2.2` bundle (format version 2), keys in the written
    order. `prior.negative_image_embed` is the zero-image embedding file; `decoder` names the latent
    UNet (`model`), `movq_decoder` and `movq_encoder`, with `latent_channels`, `out_channels`,
    `movq_scale_factor` and `default_size`."""
    return {
        "format": FORMAT, "format_version": KANDINSKY_FORMAT_VERSION, "family": KANDINSKY, "name": name,
        "source": source, "exporter": exporter, "dtype": dtype, "embedding_dim": embedding_dim,
        "tokenizer": tokenizer, "image_processor": image_processor, "models": models, "text_encoder": text_encoder,
        "image_encoder": image_encoder, "prior": prior, "decoder": decoder,
    }


def dumps(manifest_object: dict) -> str:
    """The exact text written to `bundle.json` (its sha256 identifies the model in PNG metadata)."""
    return json.dumps(manifest_object, indent=2) + "\n"


def write(out: Path, manifest_object: dict) -> Path:
    path = out / MANIFEST
    path.write_text(dumps(manifest_object))
    return path


def files(manifest_object: dict) -> list[tuple[str, str]]:
    """Every (file, sha256) the manifest lists: the tokenizer, each model and its external data,
    then its int8 model's (the order of `Bundle::files`)."""
    listed = [(manifest_object["tokenizer"]["file"], manifest_object["tokenizer"]["sha256"])]
    negative = manifest_object["prior"].get("negative_image_embed")
    if negative is not None:
        listed.append((negative["file"], negative["sha256"]))
    for entry in manifest_object["models"].values():
        for part in (entry, entry.get("int8")):
            if part is None:
                continue
            listed.append((part["file"], part["sha256"]))
            listed.extend((extra["file"], extra["sha256"]) for extra in part.get("external_data", []))
    return listed


def stage_models(manifest_object: dict) -> list[str]:
    """The model keys that stages refer to."""
    m = manifest_object
    if m.get("family") == KANDINSKY:
        return [m["text_encoder"]["model"], m["image_encoder"]["model"], m["prior"]["model"], m["decoder"]["model"],
                m["decoder"]["movq_decoder"], m["decoder"]["movq_encoder"]]
    keys = [m["text_encoder"]["model"], m["prior"]["model"], m["decoder"]["model"],
            m["decoder"]["text_proj"], m["decoder"]["text_proj_cfg"]]
    if m.get("image_encoder") is not None:
        keys.append(m["image_encoder"]["model"])
    for upsampler in m["upsamplers"]:
        keys += [upsampler["first"], upsampler["last"]]
    return keys


def escapes(file: str) -> bool:
    """A manifest path that is empty, absolute or uses `..` (`Bundle::resolve` refuses them)."""
    path = PurePosixPath(file)
    return not file or path.is_absolute() or file.startswith("\\") or ".." in path.parts


def problems(bundle_dir: Path, hashes: bool = True) -> list[str]:
    """Everything the Rust loader would refuse in `bundle_dir`, as messages (empty: loadable)."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        return [f"{path}: missing"]
    try:
        m = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        return [f"{path}: not valid JSON: {e}"]
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        return [f"{path}: `format` is {m.get('format') if isinstance(m, dict) else m!r}, expected {FORMAT!r}"]
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return [f"{path}: `format_version` missing or not an integer"]
    if version == KANDINSKY_FORMAT_VERSION and m.get("family") == KANDINSKY:
        keys = KANDINSKY_KEYS
    elif version != FORMAT_VERSION:
        return [f"{path}: format_version {version}, this exporter reads {FORMAT_VERSION} "
                f"and {KANDINSKY_FORMAT_VERSION} (family {KANDINSKY!r})"]
    else:
        keys = KEYS
    missing = [k for k in keys if k not in m and k not in OPTIONAL_KEYS]
    if missing:
        return [f"{path}: missing field(s) {', '.join(missing)}"]
    found = []
    for key in stage_models(m):
        if key not in m["models"]:
            found.append(f"{path}: a stage refers to model {key!r}, which `models` does not define")
    dim = m["embedding_dim"]
    for stat in ("clip_mean", "clip_std"):
        if len(m["prior"].get(stat, [])) != dim:
            found.append(f"{path}: prior {stat} has {len(m['prior'].get(stat, []))} values, embedding_dim is {dim}")
    if m["tokenizer"].get("max_length", 0) <= 0:
        found.append(f"{path}: tokenizer max_length is not positive")
    if m["dtype"] not in DTYPES:
        found.append(f"{path}: dtype {m['dtype']!r} is not one of {', '.join(DTYPES)}")
    for file, expected in files(m):
        if escapes(file):
            found.append(f"{path}: file path {file!r} escapes the bundle directory")
            continue
        target = bundle_dir / file
        if not target.is_file():
            found.append(f"{target}: missing")
        elif hashes and sha256(target) != expected.lower():
            found.append(f"{target}: sha256 differs from the manifest's {expected}")
    return found


def check(bundle_dir: Path, hashes: bool = True) -> dict:
    """The parsed manifest of a bundle the Rust loader accepts; `BundleError` otherwise."""
    found = problems(bundle_dir, hashes)
    if found:
        raise BundleError("; ".join(found))
    return json.loads((bundle_dir / MANIFEST).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+", help="bundle directories (each with a bundle.json)")
    ap.add_argument("--no-hashes", action="store_true", help="check that files exist, not their sha256")
    args = ap.parse_args()
    failed = False
    for bundle_dir in args.bundles:
        found = problems(bundle_dir, hashes=not args.no_hashes)
        print(f"{bundle_dir}: " + ("ok" if not found else "\n  ".join(["problems:", *found])))
        failed |= bool(found)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
