"""Security pieces of the service, pure cores with no Flask: the web package wires them into
requests (`web.gate`, `web.request_record`); `headers.init_app` imports Flask when called.
Nothing here imports torch, Flask or the web package at import time."""

import os

from settings import Settings

# Nothing in the project imports OpenCV, but a dependency might. OpenCV reads its decode caps
# once, when cv2 is first imported, and its default pixel cap (2**30) lets a small PNG allocate
# gigabytes: cap it here, before anything can import cv2, at the service's default pixel cap.
# An operator's own values win.
for _name, _value in {
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(Settings().max_pixels),
    "OPENCV_IO_MAX_IMAGE_WIDTH": "65535",
    "OPENCV_IO_MAX_IMAGE_HEIGHT": "65535",
}.items():
    os.environ.setdefault(_name, _value)
del _name, _value
