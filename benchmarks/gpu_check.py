"""The timed parts of ``benchmarks/gpu_check.sh``: one JSON line per measurement on stdout.

``infer``: the torch backend's session (what ``eval`` runs: host batch in, host logits out)
against the raw forward of the same model on device-resident input, per precision (fp32,
bf16, fp16 autocast), channels_last, batch 1/32/256. ``train``: one training step of
googlenet-bn at batch 128: ours (``Trainer``, bf16 or fp16) against a plain fp32 eager loop,
with that loop's AMP forms beside it.
``decode``: the training loader on generated 500x375 JPEGs (the P6 benchmark's), batches
delivered on the device: workers decoding and augmenting (``train --decode cpu``) against
workers that only read the files and the GPU decoding and augmenting each batch
(``--decode gpu``). ``--dry-run`` runs them on the CPU at toy sizes, to check the script itself
anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from inceptionctl import build_model, load_recipe
from inceptionctl.backend import get_backend
from inceptionctl.checkpoint import save_checkpoint
from inceptionctl.crops import normalize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_second(fn, items: int, device: torch.device, warmup: int, iters: int) -> float:
    """Items per second of ``fn`` (median of ``iters`` timed calls after ``warmup``)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    return items / times[len(times) // 2]


def infer(device: torch.device, recipe: str, batches: list[int], iters: int) -> list[dict]:
    """Session throughput against raw forward, per precision and batch.

    ``eval`` hands the session uint8 crops with one batch in flight (``submit_crops``: on CUDA
    they cross the bus as uint8 on a side stream while the batch before computes, and are
    normalised there), which is the row the target is about; ``run`` on a host float batch
    (what ``predict`` and ``compare`` do) is shown beside it.
    """
    r = load_recipe(recipe)
    size = r.eval.size
    mean, std = torch.tensor(r.data.mean), torch.tensor(r.data.std)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "m.pt", build_model(r), r)
        # fp16 autocast is CUDA's (the torch backend refuses it on a CPU: the dry run)
        for precision in ("fp32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16"):
            session = get_backend("torch").open(ckpt, device=str(device), precision=precision,
                                                channels_last=True)
            model = session.model.eval()
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
            for n in batches:
                crops = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
                host = normalize(crops, mean, std)
                dev = host.to(device).contiguous(memory_format=torch.channels_last)

                @torch.inference_mode()
                def raw() -> None:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        model(dev)

                def as_eval() -> None:  # what eval's loop does: one batch in flight
                    pending = None
                    for _ in range(4):
                        handle = session.submit_crops(crops, mean, std)
                        if pending is not None:
                            pending()
                        pending = handle
                    pending()

                raw_ips = _per_second(raw, n, device, 3, iters)
                # calls of four batches, an odd number of them (a median, not the slower of two)
                eval_ips = _per_second(as_eval, 4 * n, device, 2, max(3, iters // 4) | 1)
                run_ips = _per_second(lambda: session.run(host), n, device, 3, iters)
                rows.append({"step": "infer", "precision": precision, "batch": n,
                             "raw_img_s": round(raw_ips, 1), "session_img_s": round(eval_ips, 1),
                             "session_vs_raw": round(eval_ips / raw_ips, 3),
                             "run_float_img_s": round(run_ips, 1),
                             "run_float_vs_raw": round(run_ips / raw_ips, 3),
                             "cuda_graphs": (None if session.graphs is None else
                                             session.graphs.failed or
                                             len(session.graphs.captured))})
            session.close()
    return rows


def train(device: torch.device, recipe: str, batch: int, iters: int) -> list[dict]:
    """Training step throughput. The baseline is a plain fp32 eager loop (PyTorch's defaults:
    cuDNN may use TF32 for convolutions; NCHW, SGD); beside it the same loop with TF32 off and
    with AMP (bf16, fp16 with a GradScaler; channels_last). Ours is
    ``inceptionctl.trainer.Trainer``'s step as ``inceptionctl train --precision bf16|fp16``
    runs it (channels_last, the fused SGD, the non-finite guard), less the Polyak copy, which the
    loops lack; the row's ratio is the faster of ours against the fp32 loop."""
    from inceptionctl.data import Batch
    from inceptionctl.trainer import Trainer

    r = load_recipe(recipe)
    size = r.data.input_size
    out = {}
    loops = ("fp32", "fp32-notf32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    ours = ("bf16", "fp16") if device.type == "cuda" else ("bf16",)
    for mode in loops + tuple(f"ours-{p}" for p in ours):
        torch.manual_seed(0)
        precision = mode.removeprefix("ours-")
        amp = precision in ("bf16", "fp16")
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        torch.backends.cudnn.allow_tf32 = mode != "fp32-notf32"
        model = build_model(r).to(device).train()
        if amp:
            model = model.to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, size, size, device=device)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, r.model.num_classes, (batch,), device=device)
        if mode.startswith("ours-"):
            trainer = Trainer(model, r, device, precision, ema=False)
            data = Batch(x, y, [])

            def step() -> None:
                trainer.step(data)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
            loss_fn = torch.nn.CrossEntropyLoss()

            def step() -> None:
                with torch.autocast(device.type, dtype=dtype, enabled=amp):
                    logits, aux = model.forward_train(x)
                    loss = loss_fn(logits, y) + 0.3 * sum(loss_fn(a, y) for a in aux)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

        out[mode] = _per_second(step, batch, device, 3, iters)
        del model, step
    torch.backends.cudnn.allow_tf32 = True
    best = max((f"ours-{p}" for p in ours), key=lambda m: out[m])
    row = {"step": "train", "recipe": recipe, "batch": batch, "amp": best,
           "fp32_img_s": round(out["fp32"], 1), "amp_img_s": round(out[best], 1),
           "amp_vs_fp32": round(out[best] / out["fp32"], 3)}
    row.update({f"{m}_img_s": round(v, 1) for m, v in out.items()})
    return [row]


def decode(device: torch.device, count: int, batch: int, images: int,
           workers: int | None) -> list[dict]:
    """Loader images/s with the batches on ``device``: --decode gpu against --decode cpu as
    train runs it there (workers make uint8 crops, the float steps run on the device), and
    against every step in the workers (as on a CPU), for the gain of the former."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_loader
    from inceptionctl.data import default_workers, finish_on_device, finish_photometric

    folder = bench_loader.generate(count)
    workers = default_workers() if workers is None else workers
    rates = {}
    for mode in ("cpu", "cpu-worker", "gpu"):
        data = bench_loader.ours_loader(
            folder, batch, workers, "gpu" if mode == "gpu" else "cpu",
            pin=device.type == "cuda", photometric="device" if mode == "cpu" else "here")
        transform = data.dataset.transform

        def delivered(item, mode=mode, transform=transform):
            if mode == "gpu":
                x = finish_on_device(item, transform, device, strict=False).images
            elif mode == "cpu":
                x = finish_photometric(item, transform, device).images
            else:
                x = item.images.to(device, non_blocking=True)
            _sync(device)
            return x

        rates[mode] = bench_loader.images_per_s(lambda data=data: data, images, batch,
                                                finish=delivered, skip=workers)
        del data
    return [{"step": "decode", "batch": batch, "workers": workers, "images": images,
             "jpeg_kb": round(bench_loader.mean_kb(folder), 1),
             "cpu_img_s": round(rates["cpu"], 1), "gpu_img_s": round(rates["gpu"], 1),
             "cpu_per_worker_img_s": round(rates["cpu"] / max(1, workers), 1),
             "cpu_all_in_workers_img_s": round(rates["cpu-worker"], 1),
             "crops_vs_all_in_workers": round(rates["cpu"] / rates["cpu-worker"], 3),
             "gpu_vs_cpu": round(rates["gpu"] / rates["cpu"], 3)}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["infer", "train", "decode"])
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: checks the script")
    args = ap.parse_args()
    if args.dry_run:
        device, recipe, batches, tbatch, iters = torch.device("cpu"), "googlenet-small", [2], 2, 1
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the script)")
        device, recipe, batches, tbatch, iters = torch.device("cuda"), "googlenet-bn", \
            [32, 256], 128, 8
        torch.backends.cudnn.benchmark = True
    if args.what == "infer":
        rows = infer(device, recipe, batches, iters)
    elif args.what == "train":
        rows = train(device, recipe, tbatch, iters)
    elif args.dry_run:
        rows = decode(device, count=48, batch=8, images=16, workers=1)
    else:
        rows = decode(device, count=1024, batch=256, images=8192, workers=None)
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
