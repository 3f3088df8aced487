"""pjreddie darknet's library (Debian's libdarknet.so, git 2018-09-14) through ctypes: the calls
its `detect` command makes (load_image_color, letterbox_image, network_predict,
get_network_boxes, do_nms_sort) with the struct layouts of its darknet.h. Used to record real
darknet's detections (bench/darknet_reference.py) and to check data.preprocess against
darknet's own resize_image/letterbox_image (tests/test_darknet_exact.py).
"""
from __future__ import annotations

import ctypes as C
import os

import numpy as np

LIB = "/usr/lib/darknet/libdarknet.so"
HIER_THRESH = 0.5  # test_detector's for the `detect` command (unused by [yolo] layers)


def available(path: str = LIB) -> bool:
    return os.path.isfile(path)


class Image(C.Structure):
    _fields_ = [("w", C.c_int), ("h", C.c_int), ("c", C.c_int), ("data", C.POINTER(C.c_float))]


class Box(C.Structure):
    _fields_ = [("x", C.c_float), ("y", C.c_float), ("w", C.c_float), ("h", C.c_float)]


class Detection(C.Structure):  # darknet.h, git 2018-09-14
    _fields_ = [("bbox", Box), ("classes", C.c_int), ("prob", C.POINTER(C.c_float)),
                ("mask", C.POINTER(C.c_float)), ("objectness", C.c_float), ("sort_class", C.c_int)]


def _sig(fn, args, res=None):
    fn.argtypes, fn.restype = args, res
    return fn


class LibDarknet:
    """The few libdarknet calls darknet's detector uses, typed for ctypes."""

    def __init__(self, path: str = LIB):
        lib = C.CDLL(path)
        self.load_network = _sig(lib.load_network, [C.c_char_p, C.c_char_p, C.c_int], C.c_void_p)
        self.set_batch_network = _sig(lib.set_batch_network, [C.c_void_p, C.c_int])
        self.network_width = _sig(lib.network_width, [C.c_void_p], C.c_int)
        self.network_height = _sig(lib.network_height, [C.c_void_p], C.c_int)
        self.load_image_color = _sig(lib.load_image_color, [C.c_char_p, C.c_int, C.c_int], Image)
        self.letterbox_image = _sig(lib.letterbox_image, [Image, C.c_int, C.c_int], Image)
        self.resize_image = _sig(lib.resize_image, [Image, C.c_int, C.c_int], Image)
        self.make_image = _sig(lib.make_image, [C.c_int, C.c_int, C.c_int], Image)
        self.free_image = _sig(lib.free_image, [Image])
        self.network_predict = _sig(lib.network_predict, [C.c_void_p, C.POINTER(C.c_float)],
                                    C.POINTER(C.c_float))
        self.get_network_boxes = _sig(
            lib.get_network_boxes, [C.c_void_p, C.c_int, C.c_int, C.c_float, C.c_float,
                                    C.POINTER(C.c_int), C.c_int, C.POINTER(C.c_int)],
            C.POINTER(Detection))
        self.do_nms_sort = _sig(lib.do_nms_sort, [C.POINTER(Detection), C.c_int, C.c_int, C.c_float])
        self.free_detections = _sig(lib.free_detections, [C.POINTER(Detection), C.c_int])

    @staticmethod
    def array(im: Image) -> np.ndarray:
        """A darknet image (CHW float planes) as an HWC float32 copy."""
        return np.ctypeslib.as_array(im.data, shape=(im.c, im.h, im.w)).transpose(1, 2, 0).copy()

    def _apply(self, fn, img: np.ndarray, *args) -> np.ndarray:
        """fn(image, *args) -> image on an HWC float32 array, both darknet images freed."""
        h0, w0, c = img.shape
        im = self.make_image(w0, h0, c)
        np.ctypeslib.as_array(im.data, shape=(c, h0, w0))[:] = img.transpose(2, 0, 1)
        out = fn(im, *args)
        try:
            return self.array(out)
        finally:
            self.free_image(im)
            self.free_image(out)

    def resize(self, img: np.ndarray, w: int, h: int) -> np.ndarray:
        """darknet's resize_image on an HWC float32 array."""
        return self._apply(self.resize_image, img, w, h)

    def letterbox(self, img: np.ndarray, w: int, h: int) -> np.ndarray:
        """darknet's letterbox_image on an HWC float32 array."""
        return self._apply(self.letterbox_image, img, w, h)

    def detect(self, net: int, path: str, thresh: float, nms: float, classes: int,
               ) -> tuple[tuple[int, int], list[dict]]:
        """test_detector's steps on one image: (h, w) of the image and every kept (det, class)."""
        im = self.load_image_color(path.encode(), 0, 0)
        sized = self.letterbox_image(im, self.network_width(net), self.network_height(net))
        self.network_predict(net, sized.data)
        n = C.c_int(0)
        dets = self.get_network_boxes(net, im.w, im.h, thresh, HIER_THRESH, None, 1, C.byref(n))
        self.do_nms_sort(dets, n.value, classes, nms)
        out = []
        for j in range(n.value):
            d = dets[j]
            b = d.bbox
            for i in range(classes):
                if d.prob[i] > np.float32(thresh):  # draw_detections' rule (suppressed: 0)
                    x1, y1 = (b.x - b.w / 2) * im.w, (b.y - b.h / 2) * im.h
                    x2, y2 = (b.x + b.w / 2) * im.w, (b.y + b.h / 2) * im.h
                    out.append({"cls": i, "prob": float(d.prob[i]), "objectness": float(d.objectness),
                                "rel_xywh": [float(b.x), float(b.y), float(b.w), float(b.h)],
                                "xyxy": [round(v, 4) for v in (x1, y1, x2, y2)]})
        hw = (im.h, im.w)
        self.free_detections(dets, n.value)
        self.free_image(sized)
        self.free_image(im)
        return hw, out
