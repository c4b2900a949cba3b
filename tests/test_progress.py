"""progress=True: a tqdm bar (count, total, rate) on stderr for embed_images / embed_texts; the
same embeddings as without it; nothing printed without it."""

from __future__ import annotations

import numpy as np

from edgeclip import Embedder


def test_embed_progress(tiny_bundle, flickr_images, capsys):
    paths = [str(p) for p in flickr_images[:10]]
    with Embedder(tiny_bundle) as e:
        capsys.readouterr()
        quiet = e.embed_images(paths, batch_size=4)
        texts = e.embed_texts(["a dog"] * 7, batch_size=3)
        assert capsys.readouterr().err == ""
        loud = e.embed_images(paths, batch_size=4, progress=True)
        err = capsys.readouterr().err
        assert "images" in err and "/10" in err and "img" in err
        np.testing.assert_array_equal(loud, quiet)
        loud_t = e.embed_texts(["a dog"] * 7, batch_size=3, progress=True)
        err = capsys.readouterr().err
        assert "texts" in err and "/7" in err
        np.testing.assert_array_equal(loud_t, texts)
        vecs, skipped = e.embed_images(paths[:3] + ["/nonexistent.jpg"], on_error="skip",
                                       progress=True)
        assert len(vecs) == 3 and len(skipped) == 1 and "/4" in capsys.readouterr().err
