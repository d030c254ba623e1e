"""`rada-export predict`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, handle_errors, make_table, print_json


@handle_errors
def predict(
    images: List[Path] = typer.Argument(..., help="Image files (or folders of images) to classify."),
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder."),
    backend: str = typer.Option("auto", "--backend", help="auto, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or int8 (where the bundle has it)."),
    tta: str = typer.Option("off", "--tta", help="Test-time adaptation: off, episodic or continual."),
    views: Optional[int] = typer.Option(None, "--views", help="Episodic TTA: augmented views per image (default 16)."),
    top: int = typer.Option(3, "--top", min=1, help="Classes shown per image."),
    classes: List[str] = typer.Option(None, "--classes", help="Replace the bundle's classes (comma-separated or a file)."),
    json_out: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
):
    """Classify images with a bundle, optionally adapting the head at test time.

    Example: rada-export predict --bundle bundle/ photos/*.jpg --tta episodic --top 3
    """
    from rada_export.errors import RadaError
    from rada_export.images import find_images
    from rada_export.runtimes import TTAConfig, load_bundle

    from rada_export import validate

    validate.choice("tta", tta, ("off", "episodic", "continual"))
    if views is not None and tta != "episodic":
        raise RadaError(f"--views {views} applies only to --tta episodic (this run has --tta {tta})",
                        "add --tta episodic, or drop --views")
    names = None
    if classes:
        from rada_export.prompts import parse_class_names

        names = parse_class_names(classes)  # before the bundle loads: a missing class file costs nothing
    files: list[Path] = []
    for item in images:
        if item.is_dir():
            files += find_images(item)
        elif item.is_file():
            files.append(item)
        else:
            raise RadaError(f"image {item} does not exist", "pass existing image files or folders")
    if not files:
        raise RadaError("no image files found in the given folders", "pass JPEG/PNG/WebP/BMP files")
    config = None if tta == "off" else TTAConfig(mode=tta, views=16 if views is None else views) if tta == "episodic" else TTAConfig(mode=tta)
    runtime = load_bundle(bundle, backend=backend, device=device, tta=config, precision=precision)
    if names:
        runtime.set_classes(names)
    prediction = runtime.predict([str(f) for f in files], adapt=config is not None)
    ranked = prediction.top(top)
    if json_out:
        print_json({
            "backend": runtime.backend, "precision": runtime.precision, "tta": tta,
            "predictions": [{"image": str(f), "label": int(prediction.labels[i]), "class": prediction.class_names[i],
                             "top": [{"class": c, "probability": p} for c, p in ranked[i]]} for i, f in enumerate(files)],
        })
        return
    rows = [[str(f), prediction.class_names[i], ", ".join(f"{c} {100 * p:.1f}%" for c, p in ranked[i])] for i, f in enumerate(files)]
    console.print(make_table(f"{runtime.description}, tta {tta}", ["image", "class", f"top {top}"], rows))
