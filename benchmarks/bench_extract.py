"""Stage-one throughput: encoder forward-only vs end-to-end ``extract`` on real slides.

Prints (one run):
  * forward-only crops/s of the encoder on synthetic uint8 batches already on the device;
  * end-to-end crops/s of :func:`stfeat.extraction.extract` on the HER2ST sections (all scales: JPEG
    crops read in DataLoader workers, resize, encoder, HDF5 writes, neighbours, sample loading);
  * their ratio (targets: >= 0.8 on CPU with DenseNet-121 / EfficientNet-Lite0, >= 0.7 and >= 2000
    crops/s on an H100 with ViT-L/16, e.g. ``--encoder uni --random``);
  * peak host RSS (this process and its worker processes) and peak GPU memory.

Examples::

    python benchmarks/bench_extract.py --encoder densenet121 \\
        --weights ../shared/weights/densenet121.in1k_keras.safetensors --device cpu
    python benchmarks/bench_extract.py --encoder uni --random --device cuda --workers 12
    python benchmarks/bench_extract.py ... --sweep-threads 1,2 --sweep-workers 0,1,2 --max-spots 48

HER2ST sections are small (~180 spots, ~550 crops): on a fast GPU a section takes well under a
second, so per-section set-up (worker start, file creation) weighs on the ratio; point --data at
larger samples (e.g. a HEST-1k root with Visium sections) for the GPU target.

The slides' one-off JPEG decode (memory-mapped and reused by later runs) is timed separately and
excluded from the end-to-end figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "her2st"


def _rss_mb() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return me, kids


def forward_only(enc, device: str, crops: int, iters: int) -> float:
    import torch

    px = enc.spec.input_px
    x = torch.randint(0, 256, (crops, px, px, 3), dtype=torch.uint8, device=device)
    enc(x)  # warm-up (cudnn / oneDNN kernel selection)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        enc(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return crops * iters / (time.perf_counter() - t)


def load_samples(data: Path, n_samples: int | None, max_spots: int | None):
    from stfeat.io import resolve_samples
    from stfeat.io.sample import Sample

    refs = resolve_samples(data)[: n_samples or None]
    samples = []
    t = time.perf_counter()
    for r in refs:
        s = r.load()
        if max_spots:
            s = Sample(s.adata[:max_spots].copy(), s.slide)
        s.slide.load()  # one-off JPEG decode into the shared memory map
        samples.append(s)
    return samples, time.perf_counter() - t


def end_to_end(samples, enc, *, scales, device, batch_size, workers) -> tuple[float, int, float]:
    from stfeat.extraction import extract_caches as extract

    n_crops = sum(s.n_spots for s in samples) * len(scales)
    with tempfile.TemporaryDirectory(prefix="stfeat-bench-") as d:
        t = time.perf_counter()
        extract(samples, encoder=enc, scales_um=scales, cache_dir=d, batch_size=batch_size, num_workers=workers,
                device=device, overwrite=True, progress=False)
        dt = time.perf_counter() - t
    return n_crops / dt, n_crops, dt


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="densenet121")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    ap.add_argument("--batch-size", type=int, default=None, help="spots per batch (x scales crops per forward)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: stfeat's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--pretrained", dest="pretrained", action="store_true", default=True)
    g.add_argument("--random", dest="pretrained", action="store_false", help="random weights (e.g. UNI's ViT-L/16)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--samples", type=int, default=None, help="first N sections (default all)")
    ap.add_argument("--max-spots", type=int, default=None, help="first N spots of each section")
    ap.add_argument("--scales", default="112,224,448")
    ap.add_argument("--iters", type=int, default=None, help="forward-only iterations")
    ap.add_argument("--sweep-threads", default=None, help="e.g. 1,2: end-to-end for each torch thread count")
    ap.add_argument("--sweep-workers", default=None, help="e.g. 0,1,2: end-to-end for each worker count")
    a = ap.parse_args(argv)

    import torch

    from stfeat.encoders import create_encoder
    from stfeat.extraction import _resolve_device, auto_batch_size, default_num_workers

    if a.threads:
        torch.set_num_threads(a.threads)
    device = _resolve_device(a.device)
    scales = [float(s) for s in a.scales.split(",")]
    t = time.perf_counter()
    enc = create_encoder(a.encoder, weights=a.weights, device=device, pretrained=a.pretrained)
    enc.model.eval()
    t_build = time.perf_counter() - t
    bs = a.batch_size or auto_batch_size(enc, device, len(scales))
    workers = default_num_workers(device) if a.workers is None else a.workers
    crops = bs * len(scales)
    iters = a.iters or (3 if device == "cpu" else 20)
    print(f"device {device} ({torch.cuda.get_device_name() if device.startswith('cuda') else os.cpu_count()}"
          f"{'' if device.startswith('cuda') else ' cores'}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}")
    print(f"encoder {enc.spec.name} ({'pretrained' if a.pretrained else 'random'} weights, {enc.spec.input_px} px, "
          f"d={enc.embed_dim}, {enc.spec.precision}) built in {t_build:.1f} s; batch {bs} spots = {crops} crops; "
          f"workers {workers}; scales {scales}")
    fwd = forward_only(enc, device, crops, iters)
    print(f"forward-only:  {fwd:9.1f} crops/s  ({iters} x {crops} synthetic crops)")

    samples, t_load = load_samples(a.data, a.samples, a.max_spots)
    print(f"loaded {len(samples)} sections, {sum(s.n_spots for s in samples)} spots, in {t_load:.1f} s "
          "(counts + one-off JPEG decode, excluded below)")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rate, n, dt = end_to_end(samples, enc, scales=scales, device=device, batch_size=bs, workers=workers)
    print(f"end-to-end:    {rate:9.1f} crops/s  ({n} crops in {dt:.1f} s, {n / len(scales) / dt:.1f} spots/s)")
    # forward-only again: on a shared machine the load drifts, so the ratio uses the mean of both
    fwd2 = forward_only(enc, device, crops, iters)
    print(f"forward-only:  {fwd2:9.1f} crops/s  (again, after end-to-end; load avg {os.getloadavg()[0]:.1f})")
    print(f"ratio:         {rate / ((fwd + fwd2) / 2):9.2f}  (end-to-end / mean forward-only)")
    me, kids = _rss_mb()
    print(f"peak RSS:      {me:9.0f} MiB main process, {kids:.0f} MiB largest worker")
    if device.startswith("cuda"):
        print(f"peak GPU mem:  {torch.cuda.max_memory_allocated() / 2**20:9.0f} MiB allocated")

    if a.sweep_threads or a.sweep_workers:
        th_list = [int(x) for x in (a.sweep_threads or str(torch.get_num_threads())).split(",")]
        wk_list = [int(x) for x in (a.sweep_workers or str(workers)).split(",")]
        print("sweep (end-to-end crops/s; forward-only at the same thread count):")
        for th in th_list:
            torch.set_num_threads(th)
            f = forward_only(enc, device, crops, iters)
            for w in wk_list:
                r, _, _ = end_to_end(samples, enc, scales=scales, device=device, batch_size=bs, workers=w)
                print(f"  threads {th} workers {w}: end-to-end {r:8.1f}, forward-only {f:8.1f}, ratio {r / f:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
