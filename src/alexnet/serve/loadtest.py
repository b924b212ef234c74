"""A bounded load test on loopback: N requests, C at a time, to ``POST /predict``.

:func:`load_test` is the client (httpx, asyncio). :func:`compare_batching` serves one classifier twice,
requests one at a time and batched, in alternating rounds, with the client in its own process (so it does
not compete with the server for the interpreter), and reports requests/s and p50/p99 latency of each.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

__all__ = ["load_test", "compare_batching", "describe_comparison", "percentile"]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


async def _load(url: str, payload: bytes, filename: str, requests: int, concurrency: int, timeout: float) -> dict:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures: list[str] = []
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            for _ in todo:
                start = time.perf_counter()
                try:
                    r = await client.post("/predict", files={"file": (filename, payload, "application/octet-stream")})
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code != 200:
                        failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    failures.append(f"{type(e).__name__}: {e}")
                latencies.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return {
        "requests": requests,
        "concurrency": concurrency,
        "errors": len(failures),
        "first_errors": failures[:3],
        "statuses": statuses,
        "seconds": seconds,
        "requests_per_s": requests / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


def load_test(
    url: str,
    payload: bytes,
    *,
    requests: int = 400,
    concurrency: int = 16,
    filename: str = "image.jpg",
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Send ``requests`` uploads of ``payload``, ``concurrency`` in flight at once; count errors, time them."""
    return asyncio.run(_load(url, payload, filename, requests, concurrency, timeout))


def _client(url: str, payload: bytes, requests: int, concurrency: int, warmup: int) -> dict[str, Any]:
    """:func:`load_test` in a separate Python process (this file run as a script: no torch to import)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".img") as f:
        f.write(payload)
        f.flush()
        argv = [sys.executable, __file__, url, f.name, str(requests), str(concurrency), str(warmup)]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"the load-test client failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def compare_batching(
    clf: Any,
    payload: bytes,
    *,
    requests: int = 400,
    concurrency: int = 16,
    rounds: int = 3,
    max_batch: int = 16,
    max_wait_ms: float = 2.0,
    log: Any = None,
) -> dict[str, Any]:
    """Requests/s and latency of ``clf`` served one request at a time against batched, rounds alternating;
    the median of each. The client runs in a separate process, after a warm-up of ``concurrency * 2``."""
    from .app import create_app
    from .server import ServerThread

    configs = {"one at a time": 1, f"batched (up to {max_batch}, {max_wait_ms:g} ms wait)": max_batch}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for r in range(rounds):
        for name, batch in configs.items():
            app = create_app(clf, max_batch=batch, max_wait_ms=max_wait_ms)
            with ServerThread(app, per_client=None) as server:  # the load test is one client, on purpose
                result = _client(server.url, payload, requests, concurrency, warmup=2 * concurrency)
            runs[name].append(result)
            if log is not None:
                log(
                    f"round {r + 1}/{rounds} {name}: {result['requests_per_s']:.0f} req/s, p50 "
                    f"{result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, {result['errors']} errors"
                )
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            key: statistics.median(x[key] for x in results) for key in ("requests_per_s", "p50_ms", "p99_ms")
        }
        summary[name]["errors"] = sum(x["errors"] for x in results)
    base, batched = (summary[n]["requests_per_s"] for n in configs)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "rounds": rounds,
        "mode": clf.mode.get("mode"),
        "results": summary,
        "speedup": batched / base if base else float("nan"),
        "runs": runs,
    }


def describe_comparison(result: dict[str, Any], model: str) -> list[str]:
    """:func:`compare_batching`'s result as lines: requests/s and latency of each set-up, and the speed-up."""
    lines = [f"{model} ({result['mode']}), {result['requests']} requests x {result['rounds']} rounds, "
             f"{result['concurrency']} at a time, loopback; median of the rounds:"]  # fmt: skip
    for name, r in result["results"].items():
        lines.append(f"  {name:<34} {r['requests_per_s']:7.1f} req/s   p50 {r['p50_ms']:7.1f} ms   "
                     f"p99 {r['p99_ms']:7.1f} ms   errors {r['errors']}")  # fmt: skip
    lines.append(f"  batching: {result['speedup']:.2f}x the requests/s")
    return lines


def sample_jpeg(width: int = 500, height: int = 375, seed: int = 0) -> bytes:
    """A photo-sized JPEG (smooth colour gradients plus noise) to load a server with."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    pixels = np.clip(rgb + rng.normal(0, 20, rgb.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


if __name__ == "__main__":  # the client process of compare_batching: URL FILE REQUESTS CONCURRENCY WARMUP
    import json
    import sys
    from pathlib import Path

    url, file, n, c, warm = sys.argv[1:6]
    body = Path(file).read_bytes()
    if int(warm):
        load_test(url, body, requests=int(warm), concurrency=int(c))
    print(json.dumps(load_test(url, body, requests=int(n), concurrency=int(c))))
