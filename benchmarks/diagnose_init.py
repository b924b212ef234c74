"""Per-layer health of the first SGD steps of a fresh network: where the loss explodes, where ReLUs die.

For each combination of ``--inits`` and ``--precisions`` the same network is trained for ``--steps`` SGD
steps on the same batches (the training pipeline's own: 256 down-sampled images, random crops, flips,
fancy PCA, the model's normalisation) and, at every step, per layer (conv1..conv5, fc6, fc7, fc8):

- ``in_norm``: the mean L2 norm of one sample's input to the layer (fc8: the fc7 features after dropout,
  whose square sets how far one SGD step moves the logits);
- ``act_mean`` / ``act_std``: the layer's output after its ReLU (fc8: the logits);
- ``spread``: how much of that output depends on the image: the std over the batch of each unit, averaged
  over the units (a conv unit: one channel at one position), divided by ``act_mean``'s absolute value;
- ``dead``: the fraction of units that are zero for every sample of the batch (a conv unit is a whole
  feature map: zero at every position of every image; fc8 has no ReLU and reports 0);
- ``grad``: the L2 norm of the weight gradient (before clipping);
- ``upd``: ||W_after - W_before|| / ||W_before|| of the optimizer step (momentum and weight decay included);

plus the loss, the gradient norm of the whole network and the learning rate used. A table of the
``--show`` steps is printed for each run; ``--json`` keeps every step.

    python benchmarks/diagnose_init.py                      # alexnet2012: paper, caffe and kaiming init, fp32 and bf16
    python benchmarks/diagnose_init.py --inits paper --precisions bf16 --warmup-steps 50
    python benchmarks/diagnose_init.py --clip-grad-norm 5 --json diag.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data import loaders
from alexnet.data.datasets import resolve_dataset
from alexnet.models.alexnet import named_layers
from alexnet.models.registry import create_model, get_spec
from alexnet.runtime.device import autocast_context as autocast
from alexnet.runtime.device import tune_cpu_allocator

COLUMNS = ("in_norm", "act_mean", "act_std", "spread", "dead", "grad", "upd")


def load_training_images(root: Path, resize: int) -> tuple[torch.Tensor, torch.Tensor, loaders.PCA, int]:
    """The whole training split as one uint8 (N, 3, resize, resize) tensor, its targets, its PCA, the class count."""
    train_ds, _, classes = loaders.make_datasets(root, train_transform=loaders.decode_transform(resize))
    items = [train_ds[i] for i in range(len(train_ds))]
    items = [it for it in items if it is not None]
    images = torch.stack([torch.as_tensor(x).as_subclass(torch.Tensor) for x, _ in items])
    targets = torch.tensor([t for _, t in items])
    return images, targets, loaders.compute_pca(train_ds), len(classes)


def batch_plan(n: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Sample indices of each step: seeded shuffles, epoch after epoch (the last short batch is kept)."""
    g = torch.Generator().manual_seed(seed)
    plan: list[torch.Tensor] = []
    while len(plan) < steps:
        plan += list(torch.randperm(n, generator=g).split(batch_size))
    return plan[:steps]


class Recorder:
    """Forward hooks on each layer's ReLU (fc8: the layer itself) keep the batch statistics of its output."""

    def __init__(self, model: nn.Module) -> None:
        self.stats: dict[str, dict[str, float]] = {}
        self.layers = named_layers(model)
        self.handles = []
        by_module = {id(m): name for name, m in self.layers}
        for parent in (model.features, model.classifier):
            children = list(parent.children())
            for i, m in enumerate(children):
                name = by_module.get(id(m))
                if name is None:
                    continue
                follower = children[i + 1] if i + 1 < len(children) else None
                target = follower if isinstance(follower, nn.ReLU) else m
                self.handles.append(target.register_forward_hook(self._hook(name)))
                self.handles.append(m.register_forward_pre_hook(self._input_hook(name)))
        self.inputs: dict[str, float] = {}

    def _input_hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().float()
            self.inputs[name] = x.flatten(1).norm(dim=1).mean().item()

        return hook

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            y = output.detach().float()
            alive = (y != 0).flatten(2).any(2).any(0) if y.dim() == 4 else (y != 0).any(0)
            relu = isinstance(module, nn.ReLU)
            mean = y.mean().item()
            self.stats[name] = {
                "in_norm": self.inputs[name],
                "act_mean": mean,
                "act_std": y.std().item(),
                "spread": y.std(dim=0).mean().item() / max(abs(mean), 1e-12),
                "dead": 1.0 - alive.float().mean().item() if relu else 0.0,
            }

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run(
    model_name: str,
    init: str,
    precision: str,
    images: torch.Tensor,
    targets: torch.Tensor,
    pca: loaders.PCA,
    num_classes: int,
    args: argparse.Namespace,
) -> list[dict]:
    torch.manual_seed(args.seed)
    spec = get_spec(model_name)
    model = create_model(model_name, num_classes, init=init)
    model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=True
    )
    recorder = Recorder(model)
    aug_gen = torch.Generator().manual_seed(args.seed)
    mean, std = torch.tensor(spec.card.mean), torch.tensor(spec.card.std)
    rows = []
    for step, idx in enumerate(batch_plan(len(images), args.batch_size, args.steps, args.seed)):
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps > 0 else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = loaders.batch_augment(
            images[idx], crop=spec.card.input_size, pca=pca, pca_std=0.1, mean=mean, std=std, generator=aug_gen
        ).contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        layers = {name: dict(recorder.stats[name]) for name, _ in recorder.layers}
        total = math.sqrt(sum(float(p.grad.float().pow(2).sum()) for p in model.parameters() if p.grad is not None))
        before = {}
        for name, m in recorder.layers:
            layers[name]["grad"] = m.weight.grad.norm().item()
            before[name] = m.weight.detach().clone()
        if args.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm)
        optimizer.step()
        for name, m in recorder.layers:
            layers[name]["upd"] = ((m.weight.detach() - before[name]).norm() / before[name].norm()).item()
        top1 = (logits.argmax(1) == targets[idx]).float().mean().item()
        rows.append({"step": step, "lr": lr, "loss": loss.item(), "top1": top1, "grad_norm": total, "layers": layers})
        if not math.isfinite(loss.item()):
            break
    recorder.close()
    return rows


def print_table(title: str, rows: list[dict], show: list[int], out=sys.stdout) -> None:  # noqa: ANN001
    print(f"\n## {title}", file=out)
    print("loss per step: " + " ".join(f"{r['loss']:.2f}" for r in rows), file=out)
    header = f"{'step':>4} {'layer':<6} " + " ".join(f"{c:>10}" for c in COLUMNS)
    for s in show:
        if s >= len(rows):
            continue
        r = rows[s]
        print(
            f"step {s}: loss {r['loss']:.3f}, batch top-1 {r['top1']:.1%}, "
            f"grad norm {r['grad_norm']:.3g}, lr {r['lr']:.3g}",
            file=out,
        )
        print(header, file=out)
        for name, st in r["layers"].items():
            cells = " ".join(f"{st[c]:>10.3g}" for c in COLUMNS)
            print(f"{s:>4} {name:<6} {cells}", file=out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="photos", help="image folder, or a bundled dataset name (default: photos)")
    p.add_argument("--model", default="alexnet2012")
    p.add_argument("--inits", default="paper,caffe,kaiming", help="comma-separated init schemes")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (CPU autocast)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up from lr/K to lr over K steps")
    p.add_argument("--clip-grad-norm", type=float, default=0.0, help="clip the total gradient norm (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--show", default="0,1,5,20", help="steps whose per-layer table is printed")
    p.add_argument("--json", metavar="FILE", help="write every step's numbers here")
    args = p.parse_args(argv)

    tune_cpu_allocator()  # as training does: no page faults on the large tensors every step
    spec = get_spec(args.model)
    root = resolve_dataset(args.data)
    t0 = time.perf_counter()
    images, targets, pca, num_classes = load_training_images(Path(root), spec.card.resize_size)
    print(
        f"{args.model} on {root}: {len(images)} training images, {num_classes} classes "
        f"(chance loss ln {num_classes} = {math.log(num_classes):.3f}); loaded in {time.perf_counter() - t0:.1f} s"
    )
    show = [int(s) for s in args.show.split(",")]
    results = {}
    for init in args.inits.split(","):
        for precision in args.precisions.split(","):
            t0 = time.perf_counter()
            rows = run(args.model, init, precision, images, targets, pca, num_classes, args)
            title = f"{args.model} init={init} {precision} ({len(rows)} steps, {time.perf_counter() - t0:.0f} s)"
            print_table(title, rows, show)
            sys.stdout.flush()
            results[f"{init}-{precision}"] = rows
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
