#!/usr/bin/python3
"""A real RTSP server for tests: GStreamer's gst-rtsp-server on 127.0.0.1.

Run with the system Python, which has PyGObject (the project venv does not):

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --pattern [--size 320x240 --fps 25]
    /usr/bin/python3 tests/rtsp_server.py --port 8554 --file clip.mp4 [--loop]

Serves ``rtsp://127.0.0.1:PORT/test`` (``--mount`` changes the path) and prints
``READY rtsp://...`` on stdout once it listens. ``--user``/``--password`` turn
on basic authentication. A file must hold H.264 in MP4/MOV or Matroska; it is
sent as is (demux, parse, RTP payload), in real time, from the start for each
client; ``--loop`` starts it again at the end. ``--pattern`` sends a live
videotestsrc pattern encoded with x264 (zerolatency, one key frame a second).
SIGTERM/SIGINT stop it cleanly.
"""
from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def pattern_launch(width: int, height: int, fps: int) -> str:
    return (
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} "
        f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def file_launch(path: str) -> str:
    demux = "matroskademux" if path.lower().endswith((".mkv", ".webm")) else "qtdemux"
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'( filesrc location="{location}" ! {demux} ! h264parse '
        f"! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


class LoopingFactory(GstRtspServer.RTSPMediaFactory):
    """Start the file again at its end: drop the EOS before the payloader and seek to 0."""

    def do_configure(self, media):
        pipeline = media.get_element()
        pay = pipeline.get_by_name("pay0")

        def on_event(pad, info):
            if info.get_event().type != Gst.EventType.EOS:
                return Gst.PadProbeReturn.OK
            # seek from the main loop, not from the streaming thread that carries the EOS
            GLib.idle_add(lambda: pipeline.seek_simple(
                Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0) and False)
            return Gst.PadProbeReturn.DROP

        pay.get_static_pad("sink").add_probe(Gst.PadProbeType.EVENT_DOWNSTREAM, on_event)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/test")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file")
    source.add_argument("--pattern", action="store_true")
    parser.add_argument("--loop", action="store_true")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = LoopingFactory() if (args.file and args.loop) else GstRtspServer.RTSPMediaFactory()
    if args.file:
        factory.set_launch(file_launch(args.file))
    else:
        width, height = (int(v) for v in args.size.lower().split("x"))
        factory.set_launch(pattern_launch(width, height, args.fps))
    factory.set_shared(False)  # each client gets its own pipeline, from the first (key) frame
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory(args.mount, factory)
    if server.attach(None) == 0:
        print(f"ERROR cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1

    loop = GLib.MainLoop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, lambda *_: loop.quit() or False)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
