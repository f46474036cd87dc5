"""Recording the FP32 pipeline's stage inputs, and the cache's completion marker."""

import json

import numpy as np

from calib.episodes import generate_episodes
from calib.record import MARKER, record_stage_inputs
from calib.workloads import FewShotWorkload
from runtime.core.folder import ModelFolder


def test_record_and_cache(tiny_engines, tmp_path):
    eps = generate_episodes(2, size=256, refs=2, targets=1, seed=3)
    cache = tmp_path / "cache"
    folder = ModelFolder.open(tiny_engines)
    samples, logits = record_stage_inputs(folder, FewShotWorkload(eps), cache)
    # 2 refs + 1 target per episode: encoder/decoder 3 calls, memory encoder 2, attention 1.
    assert {s: len(v) for s, v in samples.items()} == {
        "image_encoder": 6, "memory_encoder": 4, "memory_attention": 2, "mask_decoder": 6}
    specs = folder.specs
    for s, feeds in samples.items():
        for f in feeds:
            assert set(f) == set(specs[s].input_names)
            assert all(v.dtype == np.float32 for v in f.values())
    assert samples["memory_attention"][0]["mem_feats"].shape[:2] == (1, 2)  # one concept, both references
    assert len(logits) == 2 and logits[0].shape == eps[0].targets[0].shape[:2]
    assert json.loads((cache / MARKER).read_text())["counts"]["image_encoder"] == 6

    # A complete cache is reused (identical arrays, no pipeline run).
    msgs = []
    again, logits2 = record_stage_inputs(folder, FewShotWorkload(eps), cache, log=msgs.append)
    assert any("reusing" in m for m in msgs)
    np.testing.assert_array_equal(again["image_encoder"][3]["image"], samples["image_encoder"][3]["image"])
    np.testing.assert_array_equal(logits2[1], logits[1])

    # Without the completion marker (an interrupted run) the cache is not trusted.
    (cache / MARKER).unlink()
    msgs.clear()
    record_stage_inputs(folder, FewShotWorkload(eps), cache, log=msgs.append)
    assert not any("reusing" in m for m in msgs) and (cache / MARKER).is_file()

    # Other episodes -> other key -> re-recorded.
    msgs.clear()
    s3, _ = record_stage_inputs(folder, FewShotWorkload(eps[:1]), cache, log=msgs.append)
    assert not any("reusing" in m for m in msgs) and len(s3["memory_attention"]) == 1
