"""Out of the box: the default settings serve the shipped checkpoints."""

from tests.service.conftest import png_bytes


def test_out_of_the_box_settings_serve_the_shipped_checkpoints():
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    with TestClient(create_app(Settings())) as client:
        assert client.get("/healthz/ready").status_code == 200
        names = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(names) == {"blockdrop", "full"} and names["blockdrop"]["traffic_share"] == 0.5
        for variant in ("blockdrop", "full"):
            body = client.post(
                f"/v1/classify?variant={variant}", content=png_bytes(), headers={"content-type": "image/png"}
            ).json()
            assert body["model"].startswith("cifar10-resnet32") and body["blocks"]["total"] == 15
