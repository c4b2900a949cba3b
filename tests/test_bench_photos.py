"""``edgeclip-bench --photo-size``: phone-sized JPEGs (with EXIF orientation) timed end to end in
the same rounds as the images as they are."""

import json

import numpy as np
import pytest
from PIL import Image

from edgeclip.bench import main as bench_main
from edgeclip.errors import ConfigError
from edgeclip.manifest import PreprocessCfg
from edgeclip.preprocess import load_image
from edgeclip.profiling.photos import parse_photo_size, write_photos


def test_parse_photo_size():
    assert parse_photo_size("4032x3024") == (4032, 3024)
    for bad in ("4032", "axb", "10x10", "4032x3024x2"):
        with pytest.raises(ConfigError, match="--photo-size"):
            parse_photo_size(bad)


def test_written_photos_are_upright_and_sized(flickr_images, tmp_path):
    files = write_photos(flickr_images[:2], 6, (1200, 900), tmp_path)
    assert len(files) == 6
    for i, f in enumerate(files):
        stored = Image.open(f)
        orient = stored.getexif().get(0x0112, 1)
        assert orient == ((6, 3, 8)[(i // 3) % 3] if i % 3 == 2 else 1)
        assert stored.size == ((900, 1200) if orient in (6, 8) else (1200, 900))
        img = load_image(f, PreprocessCfg(size=(224, 224)))
        assert img.size == (600, 450)  # upright and drafted at 1/2
    # the same source, upright, whatever the orientation it was stored with
    a = np.asarray(load_image(files[0]), dtype=np.float32)  # source 0, orientation 1
    c = np.asarray(load_image(files[2]), dtype=np.float32)  # source 0, orientation 6
    assert np.abs(a - c).mean() < 3.0


def test_bench_photo_size_row(tiny_bundle, tmp_path, capsys):
    js = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exc:
        bench_main([str(tiny_bundle), "--tower", "image", "--batch-sizes", "2", "--iters", "2",
                    "--warmup", "1", "--no-isolate", "--quiet", "--threads", "1",
                    "--photo-size", "1024x768", "--json", str(js)])
    assert exc.value.code == 0, capsys.readouterr().err
    (row,) = json.loads(js.read_text())["rows"]
    assert row["photo_size"] == "1024x768"
    assert row["e2e_ms"] > 0 and row["e2e_photo_ms"] > 0
    assert row["e2e_photo_over_e2e"] == pytest.approx(
        row["e2e_photo_items_per_s"] / row["e2e_items_per_s"])
    assert row["e2e_photo_items_per_s"] == pytest.approx(2000 / row["e2e_photo_ms"])


def test_bench_bad_photo_size(tiny_bundle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main([str(tiny_bundle), "--photo-size", "big"])
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.strip().splitlines()[-1].startswith("error: --photo-size")
