"""The baseline a user would otherwise write: the full ResNet behind a minimal FastAPI handler, no batching.

python -m bench.baseline_server ARTIFACT --port 8100
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
import uvicorn
from fastapi import Body, FastAPI
from PIL import Image

from models import load_artifact


def create_app(artifact: str) -> FastAPI:
    model = load_artifact(artifact)
    spec = model.manifest.input
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    app = FastAPI()

    @app.post("/classify")
    def classify(data: bytes = Body(..., media_type="image/png")) -> dict:
        image = Image.open(io.BytesIO(data)).convert("RGB").resize((spec.width, spec.height))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
        with torch.inference_mode():
            logits = model.backbone((x - mean) / std)
        class_id = int(logits.argmax())
        return {"class_id": class_id, "label": model.manifest.classes[class_id]}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.artifact), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
