#!/usr/bin/env python3
"""Fine-tunes torchvision's ImageNet MobileNetV2 on an image folder with the recipe of
`configs/classification/synthetic_mnv2.yaml`, so that candletron's final top-1 and
training time per epoch can be set against PyTorch's on the same data and thread count.

    python tools/compare/classification_torch.py --data DIR \\
        --weights ../shared/pretrained/mobilenet_v2-b0353104.pth --out torch.json

DIR holds `train/CLASS/*.png` and `val/CLASS/*.png` (torchvision's `ImageFolder`
layout; the class count comes from the folder names). `tools/compare/classification.sh`
runs candletron and this script one after the other and prints both.

The recipe:
- model: `mobilenet_v2` with the ImageNet weights, `classifier[1]` replaced by a new
  `Linear(1280, C)` (weight ~ N(0, 0.01), bias 0), dropout 0.2; every BatchNorm frozen
  (ImageNet running statistics, affine parameters not trained), all else trained;
- train: `RandomResizedCrop(96, scale=(0.35, 1))`, horizontal flip, ImageNet
  normalization; class-balanced sampling with replacement (`WeightedRandomSampler`, one
  epoch = len(train) // batch iterations); eval: `Resize(96)`, `CenterCrop(96)`;
- SGD momentum 0.9, base lr 0.001, weight decay 1e-4 (0 on biases); the rate is a linear
  warmup over 20 iterations from 0.001 (Detectron2's `WarmupLinear`) times a
  `ReduceLROnPlateau` (max, factor 0.1, patience 2, threshold 1e-4 rel, min lr 1e-6)
  stepped on the validation top-1 after each epoch;
- evaluation after every epoch and after the last iteration.

Times are wall seconds: an epoch's training (data loading included, evaluation excluded)
and each evaluation. Top-1 is a fraction, as in candletron's `eval_results.json`.
"""
import argparse
import json
import math
import time
from collections import Counter

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 96
RRC_SCALE = (0.35, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
BASE_LR = 0.001
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
WARMUP_ITERS = 20
WARMUP_FACTOR = 0.001
PLATEAU = dict(mode="max", factor=0.1, patience=2, threshold=1e-4, threshold_mode="rel",
               cooldown=0, min_lr=1e-6)


def warmup(it):
    """Detectron2's `WarmupLinear` factor of iteration `it` (0-based)."""
    if it >= WARMUP_ITERS:
        return 1.0
    a = it / WARMUP_ITERS
    return WARMUP_FACTOR * (1 - a) + a


def build_model(weights, num_classes):
    model = torchvision.models.mobilenet_v2(num_classes=1000)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    head = nn.Linear(model.last_channel, num_classes)
    nn.init.normal_(head.weight, 0, 0.01)
    nn.init.zeros_(head.bias)
    model.classifier[1] = head
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for p in m.parameters():
                p.requires_grad_(False)
    return model


def train_mode(model):
    """Training mode (dropout on) with every BatchNorm kept on its running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def evaluate(model, loader):
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            logits = model(x)
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
    return correct / n, loss_sum / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="folder with train/ and val/ subfolders")
    ap.add_argument("--weights", required=True, help="mobilenet_v2-b0353104.pth")
    ap.add_argument("--iters", type=int, default=325, help="total training iterations")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    ap.add_argument("--out", help="JSON results file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    normalize = transforms.Normalize(MEAN, STD)
    train_set = datasets.ImageFolder(f"{args.data}/train", transforms.Compose([
        transforms.RandomResizedCrop(CROP, scale=RRC_SCALE, ratio=RRC_RATIO),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ]))
    val_set = datasets.ImageFolder(f"{args.data}/val", transforms.Compose([
        transforms.Resize(CROP),
        transforms.CenterCrop(CROP),
        transforms.ToTensor(),
        normalize,
    ]))
    if train_set.classes != val_set.classes:
        raise SystemExit(f"train classes {train_set.classes} != val classes {val_set.classes}")
    num_classes = len(train_set.classes)
    iters_per_epoch = len(train_set) // args.batch
    if iters_per_epoch == 0:
        raise SystemExit(f"{len(train_set)} training images make no batch of {args.batch}")

    counts = Counter(train_set.targets)
    sampler = torch.utils.data.WeightedRandomSampler(
        [1.0 / counts[t] for t in train_set.targets], num_samples=len(train_set),
        replacement=True, generator=torch.Generator().manual_seed(args.seed))
    persistent = args.workers > 0
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch, sampler=sampler, drop_last=True,
        num_workers=args.workers, persistent_workers=persistent,
        generator=torch.Generator().manual_seed(args.seed + 1))
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=args.batch, shuffle=False, num_workers=args.workers,
        persistent_workers=persistent)

    model = build_model(args.weights, num_classes)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([
        {"params": [p for _, p in trained if p.ndim > 1], "weight_decay": WEIGHT_DECAY},
        {"params": [p for _, p in trained if p.ndim <= 1], "weight_decay": 0.0},
    ], lr=BASE_LR, momentum=MOMENTUM)
    # PyTorch's own plateau rule, on a stand-in optimizer whose rate is the plateau scale.
    plateau_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(plateau_opt, **PLATEAU)

    print(f"{len(train_set)} train / {len(val_set)} val images, {num_classes} classes "
          f"{train_set.classes}, {iters_per_epoch} iterations per epoch, {args.iters} "
          f"iterations, {args.threads} threads, torch {torch.__version__}")
    epochs = []
    it = 0
    epoch = 0
    while it < args.iters:
        epoch += 1
        train_mode(model)
        loss_sum, acc_sum, steps, lr = 0.0, 0.0, 0, 0.0
        start = time.perf_counter()
        for x, y in train_loader:
            lr = plateau_opt.param_groups[0]["lr"] * warmup(it)
            for g in optimizer.param_groups:
                g["lr"] = lr
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            acc_sum += (logits.argmax(1) == y).float().mean().item()
            steps += 1
            it += 1
            if it >= args.iters:
                break
        train_s = time.perf_counter() - start
        if not math.isfinite(loss_sum):
            raise SystemExit(f"training diverged in epoch {epoch}")
        start = time.perf_counter()
        top1, val_loss = evaluate(model, val_loader)
        eval_s = time.perf_counter() - start
        plateau.step(top1)
        epochs.append({
            "epoch": epoch, "iteration": it - 1, "iterations": steps,
            "full": steps == iters_per_epoch, "lr": lr,
            "train_loss": loss_sum / steps, "train_accuracy": acc_sum / steps,
            "val_top1": top1, "val_loss": val_loss,
            "train_seconds": train_s, "eval_seconds": eval_s,
        })

    print("| epoch | iters | lr | train loss | train acc | val top-1 | val loss | train s "
          "| eval s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in epochs:
        print(f"| {e['epoch']} | {e['iterations']} | {e['lr']:.2e} | {e['train_loss']:.4f} "
              f"| {e['train_accuracy']:.4f} | {e['val_top1']:.4f} | {e['val_loss']:.4f} "
              f"| {e['train_seconds']:.1f} | {e['eval_seconds']:.1f} |")
    full = [e["train_seconds"] for e in epochs if e["full"]]
    result = {
        "final_top1": epochs[-1]["val_top1"],
        "final_val_loss": epochs[-1]["val_loss"],
        "epochs": epochs,
        "train_seconds_per_epoch": sum(full) / len(full) if full else None,
        "train_seconds": sum(e["train_seconds"] for e in epochs),
        "eval_seconds": sum(e["eval_seconds"] for e in epochs) / len(epochs),
        "iters": args.iters,
        "iters_per_epoch": iters_per_epoch,
        "batch": args.batch,
        "threads": args.threads,
        "workers": args.workers,
        "seed": args.seed,
        "classes": train_set.classes,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
    }
    spe = result["train_seconds_per_epoch"]
    print(f"final top-1 {result['final_top1']:.4f}; "
          f"{'n/a' if spe is None else f'{spe:.1f}'} s per full epoch of training, "
          f"{result['eval_seconds']:.1f} s per evaluation")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
