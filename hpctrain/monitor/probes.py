"""What one sample reads from the system: this process (psutil) and its GPU (NVML).

psutil is a core dependency; NVML comes from the optional ``nvidia-ml-py`` package (extra
``gpu``). Without the package, without a driver or without a device the GPU probe is None and
the reason is recorded once ("no GPU: ..."): monitoring never fails a run for want of a GPU.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

MB = 1024.0 * 1024.0


class ProcessProbe:
    """CPU %, RSS and I/O rates of this process since the previous :meth:`read`."""

    def __init__(self, pid: int | None = None):
        import psutil

        self.proc = psutil.Process(pid or os.getpid())
        self.proc.cpu_percent(None)  # the first call only sets the reference point
        self._io = self._io_bytes()
        self._t = time.monotonic()

    def _io_bytes(self) -> tuple[int, int] | None:
        try:
            c = self.proc.io_counters()
        except Exception:  # noqa: BLE001 - psutil.AccessDenied on locked-down kernels, no io_counters on macOS
            return None
        return int(c.read_bytes), int(c.write_bytes)

    def read(self) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(now - self._t, 1e-9)
        io = self._io_bytes()
        rates = {"read_mb_s": None, "write_mb_s": None}
        if io is not None and self._io is not None:
            rates = {"read_mb_s": round((io[0] - self._io[0]) / MB / dt, 3),
                     "write_mb_s": round((io[1] - self._io[1]) / MB / dt, 3)}
        self._io, self._t = io, now
        return {"cpu_pct": round(self.proc.cpu_percent(None), 1),
                "rss_mb": round(self.proc.memory_info().rss / MB, 2), **rates}


def nvml_index(cuda_index: int, env: Mapping[str, str] | None = None) -> int:
    """The NVML (physical) index of CUDA device ``cuda_index``: CUDA numbers the devices listed in
    CUDA_VISIBLE_DEVICES from 0, NVML numbers all of them. Pure."""
    env = os.environ if env is None else env
    visible = [v.strip() for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and cuda_index < len(visible) and visible[cuda_index].isdigit():
        return int(visible[cuda_index])
    return cuda_index


class GpuProbe:
    """Utilisation, memory, temperature and power of one GPU through NVML."""

    def __init__(self, nvml, handle, name: str):
        self.nvml, self.handle, self.name = nvml, handle, name

    @staticmethod
    def open(index: int) -> tuple[GpuProbe | None, str]:
        """(the probe, its device name), or (None, "no GPU: why")."""
        try:
            import pynvml
        except ImportError:
            return None, "no GPU: nvidia-ml-py is not installed (pip install 'hpctrain[gpu]')"
        try:
            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return None, f"no GPU: NVML cannot start ({e})"
        try:
            count = pynvml.nvmlDeviceGetCount()
            if index >= count:
                pynvml.nvmlShutdown()
                return None, f"no GPU: NVML sees {count} device(s), this rank's is index {index}"
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
        except Exception as e:  # noqa: BLE001
            pynvml.nvmlShutdown()
            return None, f"no GPU: NVML device {index} unreadable ({e})"
        name = name.decode() if isinstance(name, bytes) else str(name)
        return GpuProbe(pynvml, handle, name), name

    def read(self) -> dict[str, Any]:
        n, h = self.nvml, self.handle
        out: dict[str, Any] = {}
        # Each figure on its own: a device that does not report power (some MIG slices) still reports the rest.
        for key, get in (("util_pct", lambda: n.nvmlDeviceGetUtilizationRates(h).gpu),
                         ("mem_used_mb", lambda: round(n.nvmlDeviceGetMemoryInfo(h).used / MB, 1)),
                         ("mem_total_mb", lambda: round(n.nvmlDeviceGetMemoryInfo(h).total / MB, 1)),
                         ("temp_c", lambda: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
                         ("power_w", lambda: round(n.nvmlDeviceGetPowerUsage(h) / 1000.0, 1))):
            try:
                out[key] = get()
            except Exception:  # noqa: BLE001 - NVMLError_NotSupported
                out[key] = None
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
