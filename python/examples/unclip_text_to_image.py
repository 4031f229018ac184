# diffusers' unCLIP example (docs: api/pipelines/unclip), line for line, with the import changed:
#
#   import torch
#   from diffusers import UnCLIPPipeline
#
#   pipe = UnCLIPPipeline.from_pretrained("kakaobrain/karlo-v1-alpha", torch_dtype=torch.float16)
#   pipe = pipe.to("cuda")
#
#   prompt = "a high-resolution photograph of a big red frog on a green leaf."
#   image = pipe([prompt]).images[0]
#   image.save("frog.png")
#
# unclip runs a bundle directory (export/export_bundle.py makes one from a diffusers checkpoint;
# no download at run time). With no argument it uses the default bundle (models/shapes).
import sys

from unclip import Pipeline as UnCLIPPipeline

pipe = UnCLIPPipeline.from_pretrained(sys.argv[1] if len(sys.argv) > 1 else None)
pipe = pipe.to("cpu")

prompt = "a high-resolution photograph of a big red frog on a green leaf."
image = pipe([prompt]).images[0]
image.save("frog.png")
