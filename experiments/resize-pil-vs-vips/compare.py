"""How far is our resizer (PIL Lanczos, moondream_cpp.crops.resize_lanczos) from upstream's first choice, pyvips
`resize(sx, vscale=sy)` (Lanczos3 reduce on the way down, affine + bicubic on the way up), on real photos at the sizes
the 2025 image path stretches to? And how close does crops.resize_vips_like (PIL again, libvips' steps) come?
Needs, for this experiment only: pip install pyvips-binary pyvips scikit-image.

    .venv/bin/python experiments/resize-pil-vs-vips/compare.py [OUT.json]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL
import pyvips
import skimage
import skimage.data as data
from PIL import Image

from moondream_cpp.crops import MARGIN_PX, WINDOW_PX, resize_lanczos, resize_vips_like, select_tiling


def photos():
    yield "astronaut", data.astronaut()
    yield "coffee", data.coffee()
    yield "chelsea", data.chelsea()
    yield "camera", np.repeat(data.camera()[..., None], 3, axis=2)  # greyscale -> RGB as load_image does
    yield "rocket", data.rocket()
    yield "retina", data.retina()
    yield "hubble", data.hubble_deep_field()
    astronaut = data.astronaut()
    yield "astronaut-face-96x128", np.ascontiguousarray(astronaut[60:156, 170:298])  # a small crop: upscale cases
    # a large photo, where libvips box-shrinks before the Lanczos reduce: retina with each pixel made 3 x 3
    yield "retina-x3", np.repeat(np.repeat(data.retina(), 3, axis=0), 3, axis=1)


def targets(h, w):
    """(label, height, width): the global view, the photo's own tiling stretch, the 2x4 and 3x4 stretches."""
    out = [("global 378x378", 378, 378)]
    th, tw = select_tiling(h, w)
    if (th, tw) != (1, 1):
        out.append((f"own tiling {th}x{tw}", th * WINDOW_PX + 2 * MARGIN_PX, tw * WINDOW_PX + 2 * MARGIN_PX))
    out += [("tiling 2x4", 644, 1176), ("tiling 3x4", 910, 1176)]
    return [t for k, t in enumerate(out) if t[1:] not in [u[1:] for u in out[:k]]]  # each size once


def vips_resize(rgb, height, width):
    image = pyvips.Image.new_from_array(rgb)
    return image.resize(width / rgb.shape[1], vscale=height / rgb.shape[0]).numpy()


def pil_bicubic(rgb, height, width):
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC))


def difference(a, b):
    if a.shape != b.shape:  # compare what both have; the size mismatch is recorded
        h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
        a, b = a[:h, :w], b[:h, :w]
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": int(d.max()), "mean": round(float(d.mean()), 3), "frac_gt2": round(float((d > 2).mean()), 4)}


def direction(h, w, th, tw):
    down_h, down_w = th < h, tw < w
    return "down" if down_h and down_w else "up" if not (down_h or down_w) else "mixed"


def main(out_path):
    rows = []
    for name, rgb in photos():
        h, w = rgb.shape[:2]
        pil_image = Image.fromarray(rgb)
        for label, th, tw in targets(h, w):
            ours = resize_lanczos(pil_image, th, tw)
            vips = vips_resize(rgb, th, tw)
            rows.append({"photo": name, "size": [h, w], "target": label, "to": [th, tw],
                         "kind": direction(h, w, th, tw), "vips_size_ok": list(vips.shape[:2]) == [th, tw],
                         "pil_lanczos_vs_vips": difference(ours, vips),
                         "vips_like_vs_vips": difference(resize_vips_like(pil_image, th, tw), vips),
                         "pil_lanczos_vs_pil_bicubic": difference(ours, pil_bicubic(rgb, th, tw))})
    summary = {}
    for kind in ("down", "mixed", "up"):
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            summary[kind] = {
                "cases": len(sel),
                "max": max(r["pil_lanczos_vs_vips"]["max"] for r in sel),
                "mean": round(float(np.mean([r["pil_lanczos_vs_vips"]["mean"] for r in sel])), 3),
                "frac_gt2": round(float(np.mean([r["pil_lanczos_vs_vips"]["frac_gt2"] for r in sel])), 4),
                "vips_like": {"max": max(r["vips_like_vs_vips"]["max"] for r in sel),
                              "mean": round(float(np.mean([r["vips_like_vs_vips"]["mean"] for r in sel])), 3),
                              "frac_gt2": round(float(np.mean([r["vips_like_vs_vips"]["frac_gt2"] for r in sel])), 4)},
                "calibration_lanczos_vs_bicubic_mean": round(float(np.mean(
                    [r["pil_lanczos_vs_pil_bicubic"]["mean"] for r in sel])), 3)}
    result = {"versions": {"pillow": PIL.__version__, "pyvips": pyvips.__version__,
                           "libvips": ".".join(str(pyvips.version(i)) for i in range(3)),
                           "scikit-image": skimage.__version__},
              "summary": summary, "cases": rows}
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        d, e = r["pil_lanczos_vs_vips"], r["vips_like_vs_vips"]
        print(f"{r['photo']:>22} {r['size'][0]:>4}x{r['size'][1]:<4} -> {r['to'][0]:>4}x{r['to'][1]:<4} "
              f"{r['kind']:>5}  lanczos: max {d['max']:>3} mean {d['mean']:6.3f} >2 {d['frac_gt2']:.4f}   "
              f"vips-like: max {e['max']:>3} mean {e['mean']:6.3f} >2 {e['frac_gt2']:.4f}"
              f"{'' if r['vips_size_ok'] else '  (vips size differs)'}")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("result.json"))
