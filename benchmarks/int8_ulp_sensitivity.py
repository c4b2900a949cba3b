"""How far one float32 rounding step moves an INT8 embedding: the floor of cross-CPU INT8 agreement.

An INT8 graph rounds activations to integer codes at every QuantizeLinear; a float value that
lies within a rounding error of a code boundary flips to the neighbouring code when the float
arithmetic before it changes in its last bit (another CPU's FMA use, summation order, SIMD
width). Such flips then propagate through the following integer layers. This benchmark measures
that effect on ONE machine: the default model's towers through the runtime's own sessions
(``Embedder``, INT8 as it runs it, FP32 for contrast) on the first ``--n`` Flickr8k test photos
(the photos of ``benchmarks/aarch64_check.sh``), with each input pixel value multiplied by
``1 + e * N(0, 1)`` for e = 1e-7 (about one float32 ulp) and 1e-6. The cosine of the perturbed
to the unperturbed embedding is what any two correct implementations on different CPUs can be
expected to agree to; compare with ``results/aarch64_check.json``.

    python benchmarks/int8_ulp_sensitivity.py [--data ../shared/data/flickr8k] [--n 32]
        [--seeds 5] [--out benchmarks/results/int8_ulp_sensitivity.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/flickr8k"))
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=5, help="noise draws per level")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/int8_ulp_sensitivity.json"))
    a = ap.parse_args(argv)

    from edgeclip import Embedder
    from edgeclip.preprocess import preprocess_image
    data = Path(a.data)
    names = [n.strip() for n in (data / "splits" / "test.txt").read_text().splitlines()
             if n.strip()][:a.n]
    res = {"command": shlex.join(["python", "benchmarks/int8_ulp_sensitivity.py",
                                  *(argv if argv is not None else sys.argv[1:])]),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": platform.machine(), "processor": platform.processor(),
           "loadavg": list(os.getloadavg()), "n_images": len(names), "seeds": a.seeds,
           "precisions": {}}
    rng = np.random.default_rng(0)
    for prec in ("int8", "fp32"):
        with Embedder(precision=prec, towers=("image",), threads=1) as e:
            runner = e._runner("image")
            name = e.manifest.towers["image"].inputs[0].name
            x = np.stack([preprocess_image(data / "images" / n, e._pre) for n in names])
            x = x.astype(np.float32)

            def embed(arr):
                y = runner.run({name: arr})
                return y / np.linalg.norm(y, axis=1, keepdims=True)
            ref = embed(x)
            out = {"graph": Path(str(runner.model.path)).name}
            for eps in (1e-7, 1e-6):
                cos = np.concatenate([
                    (embed((x * (1 + eps * rng.standard_normal(x.shape))).astype(np.float32))
                     * ref).sum(1) for _ in range(a.seeds)])
                out[f"relative_noise_{eps:g}"] = {"cos_min": round(float(cos.min()), 6),
                                                  "cos_mean": round(float(cos.mean()), 6)}
            res["precisions"][prec] = out
            print(prec, json.dumps(out), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
