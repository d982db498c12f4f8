"""Demo v2 tasks as training rows in the 2025 prompt format (spec2025's revision templates, token ids as upstream
writes them): inputs, and per position the next-token, coordinate and size labels.

detect/point rows follow upstream's loop (moondream_cpp/skills2025.py): after the prompt the model emits a token
(CONTINUE: another object; EOS: done) and, from the same hidden state, the x bin; x is fed back as a coordinate row,
which gives the y bin; y fed back gives the size bins (detect); the size row then gives the next token and x.
Values are fed as the runtime feeds them: the decoded bin, not the exact truth.
"""
from __future__ import annotations

import math

import numpy as np

from moondream_cpp import spec2025

from .model2025 import COORD_ROW, SIZE_ROW
from .synth2025 import Task

CONTINUE = 27  # "<": any token but EOS means "another object" (upstream's loop); the demo is trained to emit this one
BINS = 1024


def coord_bin(v: float) -> int:
    return int(np.clip(round(v * BINS), 0, BINS - 1))


def coord_value(b: int) -> float:
    return b / BINS


def size_bin(s: float) -> int:  # log2 bins (2025-03-27 on): s = 2^(10 b / 1023 - 10)
    return int(np.clip(round((math.log2(max(s, 2 ** -10)) + 10) * 1023 / 10), 0, BINS - 1))


def size_value(b: int) -> float:
    return 2.0 ** (10 * b / 1023 - 10)


class Row:
    """One task: inputs and labels, position by position."""

    def __init__(self):
        self.ids, self.coords, self.sizes = [], [], []
        self.lm, self.coord, self.size = [], [], []

    def add(self, ids, lm=None):
        """Token inputs; lm: the labels of these positions (None: unlabelled)."""
        for k, i in enumerate(ids):
            self.ids.append(i)
            self.coords.append(0.0)
            self.sizes.append((0.0, 0.0))
            self.lm.append(-100 if lm is None else lm[k])
            self.coord.append(-1)
            self.size.append((-1, -1))

    def label_last(self, lm=None, coord=None, size=None):
        if lm is not None:
            self.lm[-1] = lm
        if coord is not None:
            self.coord[-1] = coord
        if size is not None:
            self.size[-1] = size

    def add_region(self, kind, value):
        self.ids.append(kind)
        self.coords.append(value if kind == COORD_ROW else 0.0)
        self.sizes.append(value if kind == SIZE_ROW else (0.0, 0.0))
        self.lm.append(-100)
        self.coord.append(-1)
        self.size.append((-1, -1))


def task_row(task: Task, encode, rev: spec2025.Revision2025) -> Row:
    """`encode(text) -> ids` is the model's tokenizer."""
    r = Row()
    if task.skill in ("query", "caption"):
        if task.skill == "query":
            prompt = spec2025.query_ids(rev, encode(spec2025.template_text(rev.query, task.text)))
        else:
            prompt = list(rev.captions[task.text])
        answer = encode(" " + task.answer) + [rev.eos]
        r.add(prompt[:-1])
        r.add([prompt[-1]] + answer[:-1], lm=answer)  # position k predicts token k + 1
        return r
    t = rev.detect if task.skill == "detect" else rev.point
    r.add([*t.before, *encode(spec2025.template_text(t, task.text)), *t.after])
    boxes = task.boxes
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        xb, yb = coord_bin((x0 + x1) / 2), coord_bin((y0 + y1) / 2)
        r.label_last(lm=CONTINUE, coord=xb)
        r.add_region(COORD_ROW, coord_value(xb))
        r.label_last(coord=yb)
        r.add_region(COORD_ROW, coord_value(yb))
        if task.skill == "detect":
            wb, hb = size_bin(x1 - x0), size_bin(y1 - y0)
            r.label_last(size=(wb, hb))
            r.add_region(SIZE_ROW, (size_value(wb), size_value(hb)))
    r.label_last(lm=rev.eos)
    return r
