"""View-pipeline throughput: mscon's batched views against torchvision per-sample transforms.

Both sides make two views of every image with the same recipe (the default
``simclr`` views: random resized crop, flip, colour jitter, grayscale, then
normalisation). mscon runs :func:`mscon.data.make_views` on whole uint8
batches in the main process (the training loop's path); torchvision runs its
``transforms.v2`` pipeline per sample in a ``DataLoader`` with 2 worker
processes, either on uint8 tensors or on PIL images (the classic path),
collating float batches. Throughput is images per second (each image yields two
views), the median of several timed passes after a warm-up pass.

    python benchmarks/bench_augment.py [--sizes 32 64] [--images 4096] [--repeats 5]
        [--threads 1 2] [--json benchmarks/results/bench_augment.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

BATCH = 256


def _recipe(size: int):
    """torchvision v2 pipeline equivalent to ViewAugment(size, "simclr")."""
    from torchvision.transforms import v2

    from mscon.data.augment import MEAN, RECIPES, STD

    p = RECIPES["simclr"]
    jitter = v2.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"])
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                size, scale=p["crop_scale"], ratio=p["crop_ratio"], antialias=True
            ),
            v2.RandomHorizontalFlip(p["flip_prob"]),
            v2.RandomApply([jitter], p=p["jitter_prob"]),
            v2.RandomGrayscale(p["gray_prob"]),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


class TwoViews(Dataset):
    """Per-sample views of uint8 images, as a torchvision training pipeline would make them."""

    def __init__(self, images: torch.Tensor, size: int, pil: bool) -> None:
        self.images, self.size, self.pil = images, size, pil
        self.transform = _recipe(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.pil:
            from torchvision.transforms.v2 import functional as F

            image = F.to_pil_image(image)
        return self.transform(image), self.transform(image)


def bench_torchvision(images: torch.Tensor, size: int, pil: bool, repeats: int) -> float:
    loader = DataLoader(
        TwoViews(images, size, pil),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=4,
    )
    for _ in loader:  # warm-up: workers started, caches filled
        pass
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_mscon(
    images: torch.Tensor, size: int, repeats: int, threads: int, kind: str = "simclr"
) -> float:
    """make_views throughput on the images' device (CPU: with ``threads`` torch threads)."""
    from mscon.data.augment import ViewAugment, make_views

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = images.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    try:
        augments = [ViewAugment(size, kind), ViewAugment(size, kind)]
        generator = torch.Generator(device=device).manual_seed(0)

        def one_pass() -> None:
            order = torch.randperm(len(images), generator=generator, device=device)
            for start in range(0, len(images), BATCH):
                make_views(images[order[start : start + BATCH]], augments, generator)
            sync()

        one_pass()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            one_pass()
            rates.append(len(images) / (time.perf_counter() - start))
        return statistics.median(rates)
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch threads for mscon"
    )
    parser.add_argument("--json", default="benchmarks/results/bench_augment.json")
    parser.add_argument(
        "--device", default="cpu", help="cuda: time mscon's views on the GPU only (all recipes)"
    )
    args = parser.parse_args()
    if args.device != "cpu":
        return bench_device(args)

    from mscon.data.synthetic import render

    rows = []
    for size in args.sizes:
        images, _ = render(args.images, seed=0, image_size=size)
        row = {"size": size, "images": args.images, "batch": BATCH}
        row["torchvision_tensor"] = bench_torchvision(images, size, pil=False, repeats=args.repeats)
        row["torchvision_pil"] = bench_torchvision(images, size, pil=True, repeats=args.repeats)
        for threads in args.threads:
            row[f"mscon_{threads}thread"] = bench_mscon(images, size, args.repeats, threads)
        rows.append(row)
        print(json.dumps(row), flush=True)

    best_keys = [f"mscon_{t}thread" for t in args.threads]
    print()
    header = " | ".join(f"mscon, {t} thread(s)" for t in args.threads)
    print(f"| px | torchvision v2, uint8 tensors | torchvision v2, PIL | {header} | speed-up |")
    print("|---" * (4 + len(args.threads)) + "|")
    for row in rows:
        baseline = max(row["torchvision_tensor"], row["torchvision_pil"])
        ours = max(row[k] for k in best_keys)
        cells = " | ".join(f"{row[k]:,.0f}" for k in best_keys)
        print(
            f"| {row['size']} | {row['torchvision_tensor']:,.0f} | {row['torchvision_pil']:,.0f} | "
            f"{cells} | {ours / baseline:.1f}x |"
        )
    meta = {
        "command": " ".join(["python benchmarks/bench_augment.py", *sys.argv[1:]]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "unit": "images per second, two views per image",
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\nwrote {out}")


def bench_device(args: argparse.Namespace) -> None:
    """mscon views on an accelerator: every recipe, images resident on the device."""
    from mscon.data.synthetic import render

    device = torch.device(args.device)
    rows = []
    print("| px | " + " | ".join(KINDS) + " |")
    print("|---" * (len(KINDS) + 1) + "|")
    for size in args.sizes:
        images = render(args.images, seed=0, image_size=size)[0].to(device)
        row = {"size": size, "device": torch.cuda.get_device_name(device)}
        for kind in KINDS:
            row[kind] = bench_mscon(images, size, args.repeats, torch.get_num_threads(), kind)
        rows.append(row)
        print(f"| {size} | " + " | ".join(f"{row[k]:,.0f}" for k in KINDS) + " |", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"unit": "images per second, two views per image", "rows": rows}))


KINDS = ("simclr", "weak", "strong")


if __name__ == "__main__":
    main()
