"""P4: 144-crop evaluation crops/s vs the same backend's raw forward throughput, same batch.

The raw side runs the backend session on one preloaded, preprocessed batch again and again (no
decoding, no cropping); the eval side is `inceptionctl eval --crops 144` end to end (decode and
crop in DataLoader workers, stream full batches of crops, softmax averaging). Same process,
same session kind, same batch size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from PIL import Image

from inceptionctl import build_model, load_recipe
from inceptionctl.backend import open_artifact
from inceptionctl.checkpoint import save_checkpoint
from inceptionctl.data import default_workers
from inceptionctl.evaluate import EvalOptions, eval_workers, evaluate

from common import Goal, realistic_, seconds_per_call


def measure(recipe_name: str = "googlenet-bn", images: int = 6, batch: int = 48,
            iters: int = 6, image_size: tuple[int, int] = (400, 300), workers: int | None = None
            ) -> Goal:
    recipe = load_recipe(recipe_name, {"model.num_classes": 2, "data.classes": ["a", "b"]})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = save_checkpoint(root / "model.pt", realistic_(build_model(recipe)), recipe)
        g = torch.Generator().manual_seed(0)
        for i in range(images):
            d = root / "data" / ("a" if i % 2 else "b")
            d.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (image_size[1], image_size[0], 3), generator=g,
                                   dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(d / f"{i}.jpg", quality=90)

        size = recipe.eval.size
        with open_artifact(ckpt) as session:
            x = torch.randn(batch, 3, size, size)
            sec = seconds_per_call(lambda: session.run(x), 1, iters)
        raw = batch / sec
        def crops_per_s(n: int | None) -> tuple[float, int]:
            report = evaluate(EvalOptions([str(ckpt)], data=str(root / "data"), crops=[144],
                                          batch_size=batch, workers=n, precision="fp32",
                                          log=lambda m: None))
            assert report is not None
            return report.crops_per_s, report.images

        rate, n_images = crops_per_s(workers)
        # The default worker count (evaluate.eval_workers) is measured against its neighbours,
        # so a machine where it is wrong shows it.
        chosen = eval_workers([144])
        sweep = {} if workers is not None else {
            f"workers={n} crops/s": crops_per_s(n)[0] for n in sorted(
                {0, 1, default_workers(), default_workers() + 1} - {chosen})}
    return Goal(f"P4 144-crop eval crops/s vs raw forward ({recipe_name})",
                rate / raw, 0.9,
                details={"eval crops/s": rate, "raw crops/s": raw, "batch": batch,
                         "images": n_images, "default workers": chosen, **sweep})
