"""Where each shared thing lives in the runtime folder. Files are named by the variant's index in the settings (a
variant's name could make a socket path longer than the 108 bytes Unix sockets allow)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RuntimeLayout:
    root: Path

    def socket(self, variant: int, replica: int) -> Path:
        return self.root / f"model-{variant}-{replica}.sock"

    def status(self, variant: int, replica: int) -> Path:
        return self.root / f"model-{variant}-{replica}.status"

    def api_status(self, api_server: int) -> Path:
        return self.root / f"api-{api_server}.status"

    @property
    def supervisor_status(self) -> Path:
        return self.root / "supervisor.status"

    def incoming(self, variant: int) -> Path:
        return self.root / f"incoming-{variant}"

    def slots(self, api_server: int, variant: int, replica: int) -> Path:
        return self.root / f"slots-{api_server}-{variant}-{replica}"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def state_db(self) -> Path:
        return self.root / "shared.sqlite"
