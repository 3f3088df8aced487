"""Darknet datasets: `.data` files, image lists, YOLO txt labels, letterbox and augmentation.

Bad data never stops a run and is never silent: a missing/unreadable image is dropped, a missing
label file means "no objects", a label line with a class out of range or unparseable is skipped,
coordinates outside 0-1 are clipped. Each case is counted and reported in one summary line when
the dataset is built (`YoloDataset.summary`, counts in `YoloDataset.stats`).

Augmentation randomness comes from a generator seeded by (seed, epoch, index), so a sample is
the same whatever the worker count, the rank, or whether the run was resumed.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from yolo_slim.data.augment import PAD_VALUE, Augment, augment_hsv, warp_boxes
from yolo_slim.data.preprocess import check_mode, preprocess as prepare_input, to_tensor
from yolo_slim.core.errors import YoloSlimError
from yolo_slim.data.files import (IMG_EXTS, BadData, DataConfig, image_hw, label_path_for,  # noqa: F401
                                  parse_data_file, parse_labels, probe_image, read_image,
                                  read_image_list)  # (re-exported)

STRIDE = 32  # rect batch sides round to multiples of this unless the model's stride is given
cv2.setNumThreads(0)  # loader workers run in parallel already; OpenCV threads would oversubscribe


class YoloDataset(Dataset):
    """Images from a darknet list file with their YOLO labels; see the interface in data_iface:
    item = (img [3,H,W] float RGB 0-1, labels [n,6] (0,cls,cx,cy,w,h), path, shape_info).
    Without augmentation the image is prepared by `preprocess` (data.preprocess: letterbox,
    darknet or resize); shape_info = ((h0, w0), (ratio, (padw, padh))) where ratio is one float
    for letterbox and (ratio_x, ratio_y) for the darknet modes (preprocess.ratio_xy reads both)."""

    def __init__(self, list_path: str, img_size: int = 416, augment: bool = False,
                 aug: Augment | None = None, rect: bool = False, batch_size: int = 16,
                 nc: int | None = None, seed: int = 0, root: str | None = None,
                 limit: int | None = None, cache_mb: int = 0, preprocess: str = "letterbox",
                 stride: int = STRIDE):
        # img_size is the caller's to check against its model (nn.model.check_img_size)
        self.stride, self._undecodable = stride, set()
        if check_mode(preprocess) != "letterbox" and augment:
            raise YoloSlimError(f"--preprocess {preprocess} is for evaluation and detection; "
                                "training augments letterboxed images")
        self.preprocess = preprocess
        self.img_size, self.augment, self.rect, self.seed = img_size, augment, rect, seed
        self.aug = aug or Augment()
        self.epoch = 0
        # resized training images kept in RAM up to cache_mb: decoding and resizing is half of
        # the loader's time (mosaic reads 4 images a sample); read-only so nothing edits them
        self._cache: dict[int, np.ndarray] = {}
        self._cache_left = cache_mb * 2**20
        bad = BadData()
        self.paths, self.labels, self.hw0 = [], [], []
        for p in read_image_list(list_path, root)[:limit]:
            hw, problem, rotated = probe_image(p) if os.path.isfile(p) else (None, "missing_image", 0)
            if problem:
                bad.add(problem, p)
                continue
            if rotated:
                bad.add("exif_orientation", p)
            lp = label_path_for(p)
            if os.path.isfile(lp):
                lab = parse_labels(lp, nc, bad)
            else:
                bad.add("missing_label", lp)
                lab = np.zeros((0, 5), np.float32)
            self.paths.append(p)
            self.labels.append(lab)
            self.hw0.append(hw)
        name = os.path.basename(list_path)
        self.stats = dict(bad.counts)
        self.summary = bad.summary(name, len(self.paths), sum(len(x) for x in self.labels))
        if not self.paths:
            raise YoloSlimError(f"{list_path}: no readable images ({self.summary})")
        self.batch_shapes: list[tuple[int, int]] | None = None
        if rect:  # group similar aspect ratios so each batch pads as little as possible
            ar = np.array([h / w for h, w in self.hw0])
            order = np.argsort(ar, kind="stable")
            self.paths = [self.paths[i] for i in order]
            self.labels = [self.labels[i] for i in order]
            self.hw0 = [self.hw0[i] for i in order]
            ar = ar[order]
            self.batch_shapes = []
            for b in range(0, len(ar), batch_size):
                lo, hi = ar[b:b + batch_size].min(), ar[b:b + batch_size].max()
                # (h, w) as fractions of img_size: wide batches get shorter, tall ones narrower
                s = (hi, 1.0) if hi < 1 else ((1.0, 1 / lo) if lo > 1 else (1.0, 1.0))
                shp = tuple(int(math.ceil(img_size * v / stride) * stride) for v in s)
                self.batch_shapes += [shp] * len(ar[b:b + batch_size])

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def load(self, i: int) -> np.ndarray:
        img = read_image(self.paths[i])
        if img is None:  # unreadable body behind a valid header: grey image, no objects
            if i not in self._undecodable:  # once per image, not every epoch
                self._undecodable.add(i)
                print(f"warning: cannot decode {self.paths[i]}; using a blank image")
            img = np.full((*self.hw0[i], 3), PAD_VALUE, np.uint8)
            self.labels[i] = np.zeros((0, 5), np.float32)
        return img

    def _fit(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Image i resized so its long side is img_size; boxes as pixel xyxy on it."""
        img = self._cache.get(i)
        if img is None:
            img = self.load(i)
            r = self.img_size / max(img.shape[:2])
            if r != 1:
                size = (max(1, round(img.shape[1] * r)), max(1, round(img.shape[0] * r)))
                img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
            if img.nbytes <= self._cache_left:
                img.flags.writeable = False
                self._cache[i], self._cache_left = img, self._cache_left - img.nbytes
        h, w = img.shape[:2]
        lab = self.labels[i]
        xyxy = np.stack([(lab[:, 1] - lab[:, 3] / 2) * w, (lab[:, 2] - lab[:, 4] / 2) * h,
                         (lab[:, 1] + lab[:, 3] / 2) * w, (lab[:, 2] + lab[:, 4] / 2) * h], 1)
        return img, np.concatenate([lab[:, :1], xyxy.reshape(-1, 4)], 1)

    def _augmented(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s, a = self.img_size, self.aug
        if a.mosaic > 0 and rng.random() < a.mosaic:
            canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
            xc, yc = (int(v) for v in rng.uniform(0.5 * s, 1.5 * s, 2))
            boxes = []
            for k, j in enumerate([i, *rng.integers(0, len(self), 3)]):
                img, lab = self._fit(int(j))
                h, w = img.shape[:2]
                x1, y1 = (xc - w if k in (0, 2) else xc), (yc - h if k in (0, 1) else yc)
                cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x1 + w, 2 * s), min(y1 + h, 2 * s)
                canvas[cy1:cy2, cx1:cx2] = img[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
                lab[:, [1, 3]] += x1
                lab[:, [2, 4]] += y1
                boxes.append(lab)
            img, lab, centre = canvas, np.concatenate(boxes), (s, s)
        else:
            img, lab = self._fit(i)
            centre = (img.shape[1] / 2, img.shape[0] / 2)
        sc = rng.uniform(1 - a.scale, 1 + a.scale)
        dx, dy = rng.uniform(-a.translate, a.translate, 2) * s
        m = np.array([[sc, 0, s / 2 - sc * centre[0] + dx], [0, sc, s / 2 - sc * centre[1] + dy]])
        img = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR,
                             borderValue=(PAD_VALUE,) * 3)
        xyxy, keep = warp_boxes(lab[:, 1:5].copy(), m, s, s)
        lab = np.concatenate([lab[:, :1], xyxy], 1)[keep]
        if a.hsv_h or a.hsv_s or a.hsv_v:
            img = augment_hsv(img, rng, a.hsv_h, a.hsv_s, a.hsv_v)
        if rng.random() < a.fliplr:
            img = np.ascontiguousarray(img[:, ::-1])
            lab[:, [1, 3]] = s - lab[:, [3, 1]]
        return img, lab

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str, Any]:
        h0, w0 = self.hw0[i]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            img, lab = self._augmented(i, rng)
            img = img[:, :, ::-1]  # BGR -> RGB
            hw = img.shape[:2]
            shape_info = ((h0, w0), (self.img_size / max(h0, w0), (0.0, 0.0)))
            xyxy = lab[:, 1:5] / [hw[1], hw[0], hw[1], hw[0]]
            lab = np.concatenate([lab[:, :1], (xyxy[:, :2] + xyxy[:, 2:]) / 2,
                                  xyxy[:, 2:] - xyxy[:, :2]], 1)
        else:
            shape = self.batch_shapes[i] if self.batch_shapes else (self.img_size, self.img_size)
            img, (rx, ry), (left, top) = prepare_input(self.load(i), shape, self.preprocess)
            hw = img.shape[:2]
            lab = self.labels[i].copy()
            lab[:, 1] = (lab[:, 1] * w0 * rx + left) / hw[1]
            lab[:, 2] = (lab[:, 2] * h0 * ry + top) / hw[0]
            lab[:, 3] *= w0 * rx / hw[1]
            lab[:, 4] *= h0 * ry / hw[0]
            ratio = rx if self.preprocess == "letterbox" else (rx, ry)
            shape_info = ((h0, w0), (ratio, (float(left), float(top))))
        labels = torch.zeros((len(lab), 6))
        labels[:, 1:] = torch.from_numpy(np.asarray(lab, np.float32).reshape(-1, 5))
        return to_tensor(img), labels, self.paths[i], shape_info


def collate_fn(batch: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    imgs, labels, paths, shapes = zip(*batch)
    for k, lab in enumerate(labels):
        lab[:, 0] = k
    return torch.stack(imgs), torch.cat(labels), paths, shapes


class EpochSampler(Sampler[int]):
    """Shuffle by a generator seeded with (seed + epoch) and deal indices to ranks, so the
    order depends only on the epoch (resume-safe); with world > 1 each rank gets an equal
    share (padded by wrapping around, as DistributedSampler does)."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world
        self.epoch = 0
        self.per_rank = math.ceil(n / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        idx += idx[: self.per_rank * self.world - self.n]
        return iter(idx[self.rank::self.world])

    def __len__(self) -> int:
        return self.per_rank


def create_dataloader(list_path: str, img_size: int, batch_size: int, augment: bool,
                      rect: bool = False, workers: int = 2, shuffle: bool | None = None,
                      nc: int | None = None, rank: int = -1, seed: int = 0,
                      aug: Augment | None = None, world: int | None = None,
                      limit: int | None = None, verbose: bool = True,
                      cache_mb: int = 1024, preprocess: str = "letterbox", stride: int = STRIDE,
                      ) -> tuple[DataLoader, YoloDataset]:
    """A DataLoader over a darknet image list. rank >= 0 deals the data to DDP ranks; the
    summary line of bad data is printed once (by rank 0 or the single process). Augmented
    training images are cached (cache_mb) when the main process loads them (workers=0): worker
    processes are made anew each epoch, a cache there would not outlive it. preprocess: how
    unaugmented images become inputs (letterbox, darknet or resize; data.preprocess)."""
    cache_mb = cache_mb if augment and workers == 0 else 0
    ds = YoloDataset(list_path, img_size, augment, aug, rect, batch_size, nc, seed, limit=limit,
                     cache_mb=cache_mb, preprocess=preprocess, stride=stride)
    if verbose and rank <= 0:
        print(ds.summary)
    if world is None:
        world = torch.distributed.get_world_size() if rank >= 0 else 1
    shuffle = augment and not rect if shuffle is None else shuffle
    sampler = EpochSampler(len(ds), shuffle, seed, max(rank, 0), world)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                        drop_last=False)
    return loader, ds
