"""Security pieces of the service: each module has a core usable without Flask and a thin
`init_app(app, settings)`. Nothing here imports torch."""

import os

# Nothing in the project imports OpenCV, but a dependency might. OpenCV reads its decode caps
# once, when cv2 is first imported, and its default pixel cap (2**30) lets a small PNG allocate
# gigabytes: cap it here, before anything can import cv2 (serving-facts §5.2). An operator's
# own values win.
for _name, _value in {
    "OPENCV_IO_MAX_IMAGE_PIXELS": "40000000",
    "OPENCV_IO_MAX_IMAGE_WIDTH": "65535",
    "OPENCV_IO_MAX_IMAGE_HEIGHT": "65535",
}.items():
    os.environ.setdefault(_name, _value)
del _name, _value
