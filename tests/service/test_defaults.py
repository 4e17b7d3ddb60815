"""Out of the box: the default settings serve the shipped checkpoints."""

from tests.service.conftest import png_bytes


def test_out_of_the_box_settings_serve_the_shipped_checkpoints():
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.config import Settings

    with TestClient(create_app(Settings(grpc_port=0))) as client:  # the defaults, but no fixed port in a test
        assert client.get("/healthz/ready").status_code == 200
        names = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert set(names) == {"blockdrop", "full", "slim", "slim-blockdrop", "biglittle"}
        assert all(model["traffic_share"] == 0.2 for model in names.values())
        for variant in ("blockdrop", "slim-blockdrop"):  # the shipped BlockDrop artifacts carry their curve
            curve = names[variant]["calibration"]
            assert len(curve) >= 21 and {"threshold", "accuracy", "flops_fraction"} <= set(curve[0])
            threshold = names[variant]["threshold"]
            assert any(point["threshold"] == threshold for point in curve)  # the shipped operating point
        assert names["full"]["calibration"] is None
        for variant, model in names.items():
            response = client.post(
                f"/v1/classify?variant={variant}", content=png_bytes(), headers={"content-type": "image/png"}
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["model"] == model["model"] and body["blocks"]["total"] == model["blocks"]
            assert 0 < body["flops"]["executed"] <= body["flops"]["full"] + model["flops"]["policy"]
