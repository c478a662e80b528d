"""Would Winograd convolutions make the fp32 export faster? One 3x3 layer, direct against Winograd F(2x2, 3x3)
written as ONNX operators, on ONNX Runtime (and torch's direct convolution for scale), at the shapes of
master-small's and master's CNN, batch 1.

Winograd as graph operators: the input transform B^T d B as a depthwise 4x4 stride-2 convolution (16 outputs per
channel), the 16 products either as one grouped 1x1 convolution ("w-conv") or one batched MatMul ("w-mm"), and
the output transform A^T m A as a grouped transposed convolution. The _err columns are the largest difference
from torch's output relative to its largest value. A negative result kept for the record (README, export
targets): the transforms cost more than the 2.25x fewer multiplications save.

    python benchmarks/winograd_conv.py          # about a minute, 2 threads
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

# F(2x2, 3x3): input transform B^T (4x4), filter transform G (4x3), output transform A^T (2x4)
BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64)
G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=torch.float64)
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
SHAPES = [(256, 256, 4, 25), (128, 256, 4, 25), (128, 128, 8, 25), (128, 128, 16, 50), (64, 128, 16, 50),
          (32, 64, 32, 100), (512, 512, 6, 40)]  # (in, out, H, W): master-small's layers, and master's widest


class WinogradConv(nn.Module):
    """A 3x3, stride 1, padding 1 convolution computed as Winograd F(2x2, 3x3) with exportable operators."""

    def __init__(self, conv: nn.Conv2d, products: str):
        super().__init__()
        w = conv.weight.detach().double()  # (O, I, 3, 3)
        out_ch, in_ch = w.shape[:2]
        self.out_ch, self.products = out_ch, products
        u = torch.einsum("au,oiuv,bv->aboi", G, w, G).reshape(16, out_ch, in_ch)  # transformed filters
        bt = torch.einsum("au,bv->abuv", BT, BT).reshape(16, 1, 4, 4)
        self.register_buffer("bt", bt.repeat(in_ch, 1, 1, 1).float())  # (I*16, 1, 4, 4), channel-major
        at = torch.einsum("pa,qb->abpq", AT, AT).reshape(16, 1, 2, 2)
        self.register_buffer("at", at.repeat(out_ch, 1, 1, 1).float())  # (O*16, 1, 2, 2)
        if products == "conv":
            self.register_buffer("u", u.reshape(16 * out_ch, in_ch, 1, 1).float())
        else:
            self.register_buffer("u", u.transpose(1, 2).contiguous().float())  # (16, I, O)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        th, tw = (h + 1) // 2, (w + 1) // 2  # 2x2 output tiles
        x = F.pad(x, (1, 2 * tw + 1 - w, 1, 2 * th + 1 - h))
        v = F.conv2d(x, self.bt, stride=2, groups=c)  # (B, I*16, th, tw)
        if self.products == "conv":
            v = v.reshape(b, c, 16, th * tw).transpose(1, 2).reshape(b, 16 * c, th, tw)
            m = F.conv2d(v, self.u, groups=16)  # (B, 16*O, th, tw)
            m = m.reshape(b, 16, self.out_ch, th * tw).transpose(1, 2).reshape(b, self.out_ch * 16, th, tw)
        else:
            v = v.reshape(b, c, 16, th * tw).permute(2, 0, 3, 1).reshape(16, b * th * tw, c)
            m = torch.matmul(v, self.u)  # (16, B*T, O)
            m = m.reshape(16, b, th * tw, self.out_ch).permute(1, 3, 0, 2).reshape(b, self.out_ch * 16, th, tw)
        y = F.conv_transpose2d(m, self.at, stride=2, groups=self.out_ch)[:, :, :h, :w]
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def session(path: str, threads: int):
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def best_ms(fn, n: int = 50, rounds: int = 5) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| in, out, H, W | torch ms | ORT direct ms | ORT w-conv ms (err) | ORT w-mm ms (err) |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for shape in SHAPES:
            c, o, h, w = shape
            conv = nn.Conv2d(c, o, 3, padding=1).eval()
            x = torch.randn(1, c, h, w)
            ref = conv(x).numpy()
            cells = [f"{best_ms(lambda: conv(x)):.3f}"]
            for name, module in [("direct", conv), ("w-conv", WinogradConv(conv, "conv")),
                                 ("w-mm", WinogradConv(conv, "mm"))]:
                path = os.path.join(tmp, f"{name}.onnx")
                torch.onnx.export(module, (x,), path, dynamo=False, opset_version=18, input_names=["x"])
                sess, feed = session(path, args.threads), {"x": x.numpy()}
                err = float(np.abs(sess.run(None, feed)[0] - ref).max() / np.abs(ref).max())
                ms = best_ms(lambda: sess.run(None, feed))
                cells.append(f"{ms:.3f}" if name == "direct" else f"{ms:.3f} ({err:.0e})")
            print(f"| {shape} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
