"""Sinks: atomic files, pts kept, CDnet mask names, events lines, no path escapes."""
from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from pipeline.config import OutputsConfig
from pipeline.errors import ConfigError
from pipeline.frame import Frame
from pipeline.sinks import StreamOutputs
from pipeline.sinks.atomic import inside, safe_name
from pipeline.sinks.events import EventsSink
from pipeline.sinks.masks import MaskSink
from pipeline.sinks.video import VideoWriter, pick_codec


def decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return [f for f in c.decode(c.streams.video[0])]


def picture(i: int, h=48, w=64) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, (i * 3) % w] = 255
    return img


def test_video_keeps_pts_and_appears_only_when_closed(tmp_path):
    path = tmp_path / "v.mp4"
    writer = VideoWriter(path, fps=25)
    times = [0.0, 0.04, 0.08, 0.2, 0.24]  # a gap, as after dropped live frames
    for i, t in enumerate(times):
        writer.write(picture(i), t)
    assert not path.exists() and (tmp_path / ".v.mp4.partial").exists()
    writer.close()
    assert path.exists() and not (tmp_path / ".v.mp4.partial").exists()
    frames = decoded(path)
    assert [round(f.time, 3) for f in frames] == times


def test_video_odd_size_and_missing_pts(tmp_path):
    path = tmp_path / "odd.mp4"
    writer = VideoWriter(path, fps=10)
    for i in range(3):
        writer.write(picture(i, h=47, w=63), None)
    writer.close()
    frames = decoded(path)
    assert len(frames) == 3 and (frames[0].width, frames[0].height) == (62, 46)
    assert [round(f.time, 2) for f in frames] == [0.0, 0.1, 0.2]


def test_codec_choice():
    assert pick_codec("auto") in ("libx264", "mpeg4")
    assert pick_codec("mpeg4") == "mpeg4"


def test_masks_named_after_frame_index(tmp_path):
    sink = MaskSink(tmp_path)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    for index in (1, 1460):
        sink.write(Frame("s", index, None, picture(0), data={"mask": mask}))
    sink.write(Frame("s", 7, None, picture(0)))  # no mask -> no file
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == ["bin000001.png", "bin001460.png"]
    back = cv2.imread(str(tmp_path / "masks" / "bin001460.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back, mask)


def test_events_lines(tmp_path):
    sink = EventsSink(tmp_path)
    objs = [{"box": [np.int64(1), 2, 3, 4], "area": np.int32(12), "track": 3}]
    sink.write(Frame("s", 1, 0.0, picture(0), data={"objects": objs, "counts": {"all": 1},
                                                    "haze_score": np.float32(0.5), "dehaze_applied": True}))
    sink.write(Frame("s", 2, 0.04, picture(1)))
    assert not (tmp_path / "events.jsonl").exists()
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines[0] == {"index": 1, "pts": 0.0, "objects": [{"box": [1, 2, 3, 4], "area": 12, "track": 3}],
                        "counts": {"all": 1}, "haze_score": 0.5, "dehaze_applied": True}
    assert lines[1] == {"index": 2, "pts": 0.04, "objects": [], "counts": {}}


@pytest.mark.parametrize("name, expected", [
    ("../../etc", "etc"), ("/abs/path", "abs_path"), ("..", "stream"), ("cam 1:x", "cam_1_x"), (".hidden", "hidden"),
])
def test_stream_names_are_sanitised(name, expected):
    assert safe_name(name) == expected


def test_paths_never_escape_the_output_folder(tmp_path):
    assert inside(tmp_path, "a", "b") == (tmp_path / "a" / "b").resolve()
    with pytest.raises(ConfigError):
        inside(tmp_path, "..", "x")
    out = StreamOutputs(tmp_path / "out", "../../evil", OutputsConfig(preview=False, dehazed_video=False))
    out.write(Frame("x", 1, 0.0, picture(0), data={"mask": np.zeros((4, 4), np.uint8)}))
    out.close()
    assert out.folder.parent == (tmp_path / "out").resolve()
    assert (out.folder / "masks" / "bin000001.png").exists()


def test_stream_outputs_selected_by_config(tmp_path):
    conf = OutputsConfig(dehazed_video=True, masks=False, preview=True, events=False)
    out = StreamOutputs(tmp_path, "cam", conf, fps=25)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:30] = 255
    for i in range(4):
        out.write(Frame("cam", i + 1, i / 25, picture(i), data={
            "mask": mask, "dehazed": picture(i + 1), "objects": [{"box": [10, 10, 20, 10], "area": 200, "track": 1}],
            "counts": {"all": 1}, "haze_score": 0.4}))
    out.close()
    names = sorted(p.name for p in (tmp_path / "cam").iterdir())
    assert names == ["dehazed.mp4", "preview.mp4"]
    preview = decoded(tmp_path / "cam" / "preview.mp4")
    assert len(preview) == 4 and (preview[0].width, preview[0].height) == (3 * 64, 48)
    # the overlay panel is tinted red where the mask is on
    right = preview[-1].to_ndarray(format="bgr24")[:, 128:]
    assert right[15, 20, 2] > right[15, 20, 0] + 60
