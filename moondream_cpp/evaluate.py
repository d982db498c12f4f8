"""VQA-style evaluation: the VQAv2 answer normalisation and min(matches/3, 1) accuracy, per question type."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import ImageError, MoondreamError

# --- the official VQAv2 evaluation's normalisation (vqaEval.py), reimplemented ---
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "wasnt": "wasn't", "werent": "weren't", "hasnt": "hasn't",
                 "havent": "haven't", "couldnt": "couldn't", "shouldnt": "shouldn't", "wouldnt": "wouldn't",
                 "im": "i'm", "ive": "i've", "youre": "you're", "theyre": "they're", "whats": "what's",
                 "thats": "that's", "theres": "there's", "lets": "let's", "its": "it's"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


def normalize_answer(ans: str) -> str:
    ans = ans.replace("\n", " ").replace("\t", " ").strip().lower()
    out = ans
    for p in _PUNCT:
        if (p + " " in ans or " " + p in ans) or re.search(_COMMA_STRIP, ans) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = []
    for w in out.split():
        w = _NUMBERS.get(w, w)
        if w not in _ARTICLES:
            words.append(_CONTRACTIONS.get(w, w))
    return " ".join(words)


def vqa_score(prediction: str, references: list[str]) -> float:
    """min(matches/3, 1); with fewer than 3 references, min(matches/len(references), 1) (so one reference is 0/1)."""
    pred = normalize_answer(prediction)
    matches = sum(pred == normalize_answer(r) for r in references)
    return min(matches / min(3, len(references)), 1.0)


@dataclass
class EvalReport:
    by_type: dict = field(default_factory=dict)  # type -> {"n", "vqa", "exact"}
    overall: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)  # (image, reason)
    rows: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"overall": self.overall, "by_type": self.by_type, "skipped": self.skipped}


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise MoondreamError(f"{path}: no such file")
    if not path.is_file():
        raise MoondreamError(f"{path} is a directory; give eval a JSON-lines file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MoondreamError(f"{path} is not a text file (byte {e.start} is not UTF-8); give eval a JSON-lines file "
                             "of {image, question, answers} objects") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _question_row(line)
        if row is None:
            raise MoondreamError(f"{path}:{n}: expected a JSON object with image, question and answers (strings)")
        row["image"] = str((path.parent / row["image"]) if not Path(row["image"]).is_absolute() else row["image"])
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    return rows


def _question_row(line: str) -> dict | None:
    """The row of one JSON line, answers made a list; None when it is not {image, question, answer(s)} of strings."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("question"), str):
        return None
    answers = row.get("answers", row.get("answer"))
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        return None
    row["answers"] = answers
    return row


def evaluate(answer: Callable[[str, str], str], rows: Iterable[dict], progress: Callable[[], None] | None = None
             ) -> EvalReport:
    """Score `answer(image_path, question)` on VQA rows; unreadable images are skipped and reported."""
    rep = EvalReport()
    sums: dict[str, list] = {}
    for row in rows:
        try:
            pred = answer(row["image"], row["question"])
        except ImageError as e:
            rep.skipped.append((row["image"], str(e)))
            if progress:
                progress()
            continue
        v, x = vqa_score(pred, row["answers"]), float(normalize_answer(pred) == normalize_answer(row["answers"][0]))
        t = row.get("type", "all")
        sums.setdefault(t, []).append((v, x))
        rep.rows.append({**row, "prediction": pred, "vqa": v, "exact": x})
        if progress:
            progress()
    allv = [s for v in sums.values() for s in v]
    for t, v in sorted(sums.items()):
        rep.by_type[t] = {"n": len(v), "vqa": 100 * sum(a for a, _ in v) / len(v),
                          "exact": 100 * sum(b for _, b in v) / len(v)}
    if allv:
        rep.overall = {"n": len(allv), "vqa": 100 * sum(a for a, _ in allv) / len(allv),
                       "exact": 100 * sum(b for _, b in allv) / len(allv)}
    return rep
